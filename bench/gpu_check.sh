#!/usr/bin/env bash
# Check the engine on a machine with a CUDA GPU, in one command (about 10 minutes on an H100):
#
#   bash bench/gpu_check.sh [OUT_DIR]          # run from the repository root, in the project's venv
#
# 1. the tests that also run on CUDA (their `cuda` parametrisations; on a CPU-only machine they are skipped);
# 2. a tiny end-to-end build on the GPU (the bundled sample: embedded images, no network);
# 3. bench/recipe.py at real model sizes (random weights, built offline) with --profile, precision auto and bf16;
# 4. the other captioner families against BLIP-large at real size (bench/recipe.py --captioner), 8 candidates.
# Then one summary: each step's result and time, and the benchmark's end-to-end figures. Logs, the build's
# output, the benchmark JSON and the profiler trace go to OUT_DIR (default: a new temporary folder).
set -uo pipefail

out=${1:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$out"
python=${PYTHON:-python}
images=${GPU_CHECK_IMAGES:-128}
summary=()

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to torch (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); nothing checked" >&2
    exit 2
fi
"$python" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

step() {  # step NAME COMMAND...: run it, log it, record its status and seconds
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    summary+=("$(printf '%-16s %-6s %5ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAILED)" $((SECONDS - start)) "$out/$name.log")")
    return $rc
}

step cuda-tests "$python" -m pytest -q -rs -k cuda tests
step tiny-build "$python" build.py --preset tiny --cache_dir "$out/cache" --output_dir "$out/tiny-build" \
    --overwrite --gallery_rows 0
for precision in auto bf16; do
    step "recipe-$precision" "$python" bench/recipe.py --device cuda --images "$images" --precision "$precision" \
        --profile "$out/profile-$precision" --json "$out/recipe-$precision.json"
done
step captioners "$python" bench/recipe.py --device cuda --captioner git,smolvlm,qwen2_vl --images 16 \
    --batch_size 8 --num_candidates 8

echo
echo "== summary ($out)"
printf '%s\n' "${summary[@]}"
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
stats = out / "tiny-build" / "stats.json"
if stats.exists():
    print("tiny build rows by status:", json.loads(stats.read_text()).get("statuses"))
for path in sorted(out.glob("recipe-*.json")):
    r = json.loads(path.read_text())
    timed = r["timed"]
    seconds = sum(timed["seconds"].values())
    per_stage = ", ".join(f"{name} {timed['images'] / s:.1f}" for name, s in timed["seconds"].items() if s)
    print(f"{path.stem}: {r['device_name']} ({r['dtype']}): end to end {timed['images'] / seconds:.1f} images/s "
          f"(per stage: {per_stage}); {r.get('ratio', float('nan')):.1f}x the reference loop")
EOF
grep -q FAILED <<< "${summary[*]}" && exit 1 || exit 0
