"""Benchmark the full recipe (caption, rank, rerank, repair) at real model sizes, against the reference loop.

    python bench/recipe.py [--device cuda] [--images 256] [--batch_size 64] [--precision auto]
    python bench/recipe.py --tiny                      # tiny models on CPU, in seconds (a smoke run)
    python bench/recipe.py --captioner git,qwen2_vl    # each captioner's cost against BLIP-large's

The four models are the real architectures with random weights (`bench/real_size_models.py`, built once
into the cache dir: no download, same FLOPs), fed synthetic images the size the fetch stage delivers.
The product's own stage functions run on map batches exactly as `builder/` chains them; then, in the same
process after the fast models are freed, `bench.reference_loop.ReferenceLoop` (LAION's one-image-at-a-time
loop, fp32) captions a few images. Prints images/s, ms/image, FLOPs, achieved TFLOP/s and share of the
device's peak, and peak memory per stage, end to end and for the reference, and the ratio. See bench/README.md.

`--captioner` compares captioner families instead (`bench/real_size_captioners.py`; with `--tiny`,
`builder.tiny_captioners`): BLIP and each named family in turn through the caption stage, the other stages
loaded once and run as always, and one table of each captioner's cost and its ratio to BLIP's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)  # width / height, cycled
# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity); the first entry whose words all occur in the
# device name wins, so more specific names come first.
PEAK_TFLOPS = (
    (("H100", "PCIe"), 756), (("H100", "NVL"), 835), (("H100",), 989), (("H200",), 989), (("B200",), 2250),
    (("A100",), 312), (("L40S",), 362), (("L40",), 181), (("L4",), 121), (("A10G",), 70), (("A10",), 125),
    (("RTX 4090",), 165), (("RTX 3090",), 71), (("V100",), 125), (("T4",), 65),
)


# ---------------------------------------------------------------------------------------------- setup


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random models (builder.tiny_models), CPU, few images")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available; cpu with --tiny)")
    p.add_argument("--images", type=int, default=None, help="images timed through the stages (256; 8 with --tiny)")
    p.add_argument("--batch_size", type=int, default=None, help="rows per map batch (64; 4 with --tiny)")
    p.add_argument("--model_batch_size", type=int, default=0, help="stages' sub-batch size; 0: sized to free memory")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (auto: CLIP fp16 on GPUs, else fp32)")
    p.add_argument("--warmup_images", type=int, default=None,
                   help="untimed first batch (min(batch_size, 8) on GPUs, 1 on CPUs)")
    p.add_argument("--flop_images", type=int, default=None,
                   help="images per stage in the FLOP-counting pass (2; 1 with --tiny)")
    p.add_argument("--reference_images", type=int, default=None,
                   help="images through the reference loop (4 on GPUs, 1 on CPUs; 0 skips it)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak dense bf16 TFLOP/s (default: table)")
    p.add_argument("--profile", type=Path, default=None, help="profile one extra batch; chrome trace into this dir")
    p.add_argument("--cache_dir", type=Path, default=Path(tempfile.gettempdir()) / "laion-coco-bench-recipe",
                   help="where the models are built once (real size: ~7 GB)")
    p.add_argument("--seed", type=int, default=0, help="synthetic images and sampling seed")
    p.add_argument("--json", type=Path, default=None, help="also write all results here")
    p.add_argument("--captioner", default=None, metavar="FAMILY[,FAMILY...]",
                   help="compare these captioner families (names or model_types of map_fns.captioners) with BLIP\n"
                        "(blip: the recipe's own); the reference loop is then not run")
    p.add_argument("--num_candidates", type=int, default=None, help="candidates per image (default: the recipe's 40)")
    args = p.parse_args()
    if args.captioner is not None:
        try:
            args.captioner = captioner_model_types(args.captioner, args.tiny)
        except ValueError as error:
            p.error(str(error))

    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    on_gpu = torch.device(args.device).type == "cuda"
    defaults = {"images": 8 if args.tiny else 256, "batch_size": 4 if args.tiny else 64,
                "warmup_images": 1, "flop_images": 1 if args.tiny else 2, "reference_images": 1}
    if on_gpu:
        defaults.update(warmup_images=min(args.batch_size or defaults["batch_size"], 8), reference_images=4)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.images < 1 or args.batch_size < 1:
        p.error("--images and --batch_size must be >= 1")
    if args.num_candidates is not None and args.num_candidates < 1:
        p.error(f"--num_candidates must be >= 1, got {args.num_candidates}")
    return args


def captioner_model_types(spec: str, tiny: bool) -> list[str]:
    """`--captioner`'s families as the model_types to build, BLIP first (the baseline of the ratios); ValueError
    naming a name that is no family, or a family no model of this size is built for."""
    from map_fns.captioners import BLIP, FAMILIES, supported

    if tiny:
        from builder.tiny_captioners import TINY_FAMILIES as buildable
    else:
        from bench.real_size_captioners import CAPTIONERS as buildable
    chosen = []
    for name in (part.strip().lower() for part in spec.split(",")):
        family = next((f for f in FAMILIES if name in (f.name.lower(), *f.model_types)), None)
        if family is None:
            raise ValueError(f"--captioner {name!r} is not a captioner family (supported: {supported()})")
        model_type = name if name in family.model_types else family.model_types[0]
        if family is not BLIP and model_type not in buildable:
            raise ValueError(f"--captioner {name!r}: no {'tiny' if tiny else 'real-size'} {model_type} model is "
                             f"built here (available: blip, {', '.join(buildable)})")
        chosen.append(model_type)
    return list(dict.fromkeys([BLIP.model_types[0], *chosen]))


def synthetic_images(n: int, seed: int, prefix: str) -> tuple[list, list[str]]:
    """RGB images with the fetch stage's shorter side and varied aspects: colour gradients plus noise."""
    import numpy as np
    from PIL import Image

    from map_fns.fetch import FetchConfig

    short = FetchConfig().resize_min_side or 448
    images, keys = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, len(prefix)])
        aspect = ASPECTS[i % len(ASPECTS)]
        w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        across = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3)
        down = np.linspace(0, 1, h)[:, None, None] * rng.uniform(-128, 128, 3)
        pixels = across + down + rng.normal(0, rng.uniform(10, 60), (h, w, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
        keys.append(f"{prefix}-{seed}-{i}")
    return images, keys


def model_stages() -> list:
    """The registered stages that run a model, in run order (the fetch stage's work is `bench/fetch.py`'s)."""
    from map_fns.registry import STAGES

    return [stage for stage in STAGES if stage.model]


def stage_configs(args) -> dict:
    """Each model stage's config: recipe defaults, its model from the cache, the bench's seed where it has one."""
    if args.tiny:
        from builder.tiny_models import build_tiny_models

        paths = build_tiny_models(args.cache_dir)
    else:
        from bench.real_size_models import build_real_size_models

        paths = build_real_size_models(args.cache_dir)
    configs = {}
    for stage in model_stages():
        config = stage.config(**{stage.model: getattr(paths, stage.model)})
        configs[stage.name] = dataclasses.replace(config, seed=args.seed) if hasattr(config, "seed") else config
    if args.num_candidates:
        configs["caption"] = dataclasses.replace(configs["caption"], num_candidates=args.num_candidates)
    return configs


def load_stages(cfgs: dict, args, sync, names: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """The product's model stage functions (those in `names`; all by default), loaded as the run loads them,
    and their load seconds."""
    from map_fns.stage import StageContext

    context = StageContext(args.device, args.precision, args.model_batch_size)
    stages, load_s = {}, {}
    for stage in model_stages():
        if names is not None and stage.name not in names:
            continue
        start = time.perf_counter()
        stages[stage.name] = stage.load(cfgs[stage.name], context)
        sync()
        load_s[stage.name] = time.perf_counter() - start
    return stages, load_s


def captioner_path(model_type: str, args, blip: str) -> str:
    """The folder of `model_type`'s captioner of the run's size (`blip`: the recipe's own, already built)."""
    if model_type == "blip":
        return blip
    if args.tiny:
        from builder.tiny_captioners import build_tiny_captioner

        return build_tiny_captioner(model_type, args.cache_dir)
    from bench.real_size_captioners import build_real_size_captioner

    return build_real_size_captioner(model_type, args.cache_dir)


def mirrored_checkpoint(model_type: str, tiny: bool) -> str:
    """The public checkpoint a captioner's configuration copies."""
    from bench.real_size_captioners import CAPTIONERS
    from map_fns.caption import DEFAULT_CAPTIONER

    if tiny:
        return "tiny"
    return DEFAULT_CAPTIONER if model_type == "blip" else CAPTIONERS[model_type].mirrors


def parameter_count(folder: str) -> int:
    """Parameters in a saved model's safetensors files, read from their headers."""
    import math

    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def new_batch(images: list, keys: list[str]) -> dict[str, list]:
    """A map batch as the fetch stage hands it on: every row ok."""
    n = len(images)
    return {"_image": list(images), "_row_key": list(keys), "status": ["ok"] * n, "error": [None] * n}


# ---------------------------------------------------------------------------------------------- measuring


def make_sync(device: str):
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def peak_mib(device: str, reset: bool = False) -> float | None:
    """CUDA: max_memory_allocated since the last reset. CPU: the process's peak RSS so far (never resets)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_stages(stages: dict, images: list, keys: list[str], batch_size: int, device: str) -> dict:
    """Seconds and peak memory per stage over map batches (stages run one after another on each batch),
    plus the candidates' sizes: unique candidates per image and words (≈ BLIP tokens) per candidate."""
    from tqdm import tqdm

    sync, on_gpu = make_sync(device), device.startswith("cuda")
    seconds, peaks = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0.0)
    counts = {"images": 0, "ok": 0, "candidates": 0, "words": 0, "repaired_words": 0}
    for start in tqdm(range(0, len(images), batch_size), desc="timed batches", unit="batch"):
        batch = new_batch(images[start : start + batch_size], keys[start : start + batch_size])
        for name, fn in stages.items():
            peak_mib(device, reset=True)
            sync()
            t0 = time.perf_counter()
            batch.update(fn(batch))
            sync()
            seconds[name] += time.perf_counter() - t0
            peaks[name] = max(peaks[name], peak_mib(device) or 0.0) if on_gpu else None
        found = [c for c in batch["_candidates"] if c]
        counts["images"] += len(batch["status"])
        counts["ok"] += sum(s == "ok" for s in batch["status"])
        counts["candidates"] += sum(map(len, found))
        counts["words"] += sum(len(text.split()) for c in found for text in c)
        counts["repaired_words"] += sum(len(text.split()) for text in batch["top_caption"] if text)
    return {"seconds": seconds, "peak_mib": peaks, "process_peak_mib": peak_mib(device), **counts}


def count_flops(stages: dict, images: list, keys: list[str]) -> dict[str, float]:
    """FLOPs per image per stage (matmuls, convolutions, attention), counted in one untimed batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs):  # torch counts only the GPU kernels
        return sdpa_flop_count(query, key, value)

    cpu_kernel = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    batch, flops = new_batch(images, keys), {}
    for name, fn in stages.items():
        with FlopCounterMode(display=False, custom_mapping=cpu_kernel) as counter:
            batch.update(fn(batch))
        flops[name] = counter.get_total_flops() / len(images)
    return flops


def warm_up(stages: dict, args, sync) -> None:
    """One untimed batch of `--warmup_images` images through the stages (none: skipped)."""
    if not args.warmup_images:
        return
    print(f"warm-up: {args.warmup_images} image(s), untimed", flush=True)
    batch = new_batch(*synthetic_images(args.warmup_images, args.seed, "warmup"))
    for fn in stages.values():
        batch.update(fn(batch))
    sync()


def measure(stages: dict, images: list, keys: list[str], args) -> tuple[dict, dict]:
    """The stages timed over `images` (`time_stages`), then their FLOPs per image on the first `--flop_images`."""
    timed = time_stages(stages, images, keys, args.batch_size, args.device)
    print(f"counting FLOPs on {args.flop_images} image(s) ...", flush=True)
    return timed, count_flops(stages, images[: args.flop_images], keys[: args.flop_images])


def profile_batch(stages: dict, images: list, keys: list[str], device: str, out_dir: Path) -> None:
    """One batch under torch.profiler: the top operators printed, a chrome trace saved."""
    from torch.profiler import ProfilerActivity, profile, record_function

    on_gpu = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    batch, sync = new_batch(images, keys), make_sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for name, fn in stages.items():
            with record_function(f"stage:{name}"):
                batch.update(fn(batch))
        sync()
        wall_us = (time.perf_counter() - start) * 1e6
    ops = prof.key_averages()
    print(ops.table(sort_by="device_time_total" if on_gpu else "cpu_time_total", row_limit=25))
    if on_gpu:  # kernels' own time over wall time: how busy the one stream kept the GPU (profiler overhead included)
        print(f"GPU busy in the profiled batch: {sum(e.self_device_time_total for e in ops) / wall_us:.0%}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / "recipe-trace.json"))
    print(f"chrome trace: {out_dir / 'recipe-trace.json'}")


def time_reference(cfgs: dict, images: list, keys: list[str], device: str) -> dict:
    """The reference loop (its own fp32 models), one image at a time; warmed up with one image on GPUs."""
    from tqdm import tqdm

    from bench.reference_loop import ReferenceLoop

    sync = make_sync(device)
    peak_mib(device, reset=True)
    start = time.perf_counter()
    loop = ReferenceLoop(cfgs["caption"], cfgs["rank"], cfgs["rerank"], cfgs["repair"], device)
    sync()
    load_s = time.perf_counter() - start
    if device.startswith("cuda"):
        loop.run(images[0], keys[0] + "-warmup")
    sync()
    start = time.perf_counter()
    for image, key in tqdm(list(zip(images, keys)), desc="reference loop", unit="image"):
        loop.run(image, key)
    sync()
    return {"images": len(images), "seconds": time.perf_counter() - start, "load_s": load_s,
            "peak_mib": peak_mib(device)}


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def device_peak_tflops(device: str, override: float | None) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", override
    name = torch.cuda.get_device_name(device)
    return name, override or next((peak for words, peak in PEAK_TFLOPS if all(w in name for w in words)), None)


# ---------------------------------------------------------------------------------------------- report


def num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def print_table(header: list[str], rows: list[list]) -> None:
    """Columns padded to their widest cell, the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print()
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) if j else str(x).ljust(w) for j, (x, w) in enumerate(zip(row, widths))))
    print()


def table_rows(r: dict) -> list[list]:
    timed, flops, peak = r["timed"], r["flops_per_image"], r["peak_tflops"]
    n = timed["images"]

    def row(label, images, seconds, flop_per_image, mem, load):
        tflops = flop_per_image * images / seconds / 1e12 if flop_per_image is not None else None
        return [label, images, f"{seconds:.3f}", num(images / seconds), num(1000 * seconds / images),
                num(None if flop_per_image is None else flop_per_image / 1e9), num(tflops),
                f"{100 * tflops / peak:.1f}%" if peak and tflops is not None else "n/a",
                "-" if mem is None else f"{mem:.0f}", f"{load:.1f}"]

    rows = [row(s, n, timed["seconds"][s], flops[s], timed["peak_mib"][s], r["load_s"][s]) for s in timed["seconds"]]
    rows.append(row("end to end", n, sum(timed["seconds"].values()), sum(flops.values()),
                    max(filter(None, timed["peak_mib"].values()), default=timed["process_peak_mib"]),
                    sum(r["load_s"].values())))
    if r.get("reference"):
        ref = r["reference"]
        rows.append(row("reference", ref["images"], ref["seconds"], None, ref["peak_mib"], ref["load_s"]))
    return rows


def print_header(r: dict) -> None:
    print(f"\ndevice {r['device_name']} ({r['device']}) | precision {r['precision']} ({r['dtype']}) | "
          f"batch size {r['batch_size']} | model batch size {r['model_batch_size'] or 'auto'} | "
          f"{r['num_candidates']} candidates per image, schedule {r['length_schedule']} | "
          f"torch {r['torch']} | models {r['models']} | peak {r['peak_tflops'] or 'n/a'} TFLOP/s bf16 dense")


def print_report(r: dict) -> None:
    print_header(r)
    header = ["stage", "images", "s", "images/s", "ms/image", "GFLOP/image", "TFLOP/s", "% of peak", "peak MiB",
              "load s"]
    print_table(header, table_rows(r))
    timed = r["timed"]
    if r.get("reference"):
        print(f"fast / reference (end to end): {r['ratio']:.3g}x")
    ok = max(timed["ok"], 1)
    print(f"{timed['ok']}/{timed['images']} rows ok; {timed['candidates'] / ok:.1f} unique candidates per image, "
          f"{timed['words'] / max(timed['candidates'], 1):.1f} words (~BLIP tokens) each of at most "
          f"{r['mean_max_tokens']:.1f} on average; top_caption {timed['repaired_words'] / ok:.1f} words after repair")
    print("Random weights rarely emit EOS, so candidates run to their max length and repairs to "
          "repair_max_new_tokens: a worst case for decoding. FLOPs: torch FlopCounterMode over "
          f"{r['flop_images']} image(s) per stage (matmul, conv, attention; not sampling or preprocessing). "
          f"peak MiB: {r['memory_how']}.")


def captioner_rows(r: dict) -> list[list]:
    """One row per captioner: its model, its cost per image per stage and end to end, its candidates' sizes, and
    its caption stage's time and FLOPs and the end-to-end time as multiples of BLIP's in the same run."""
    def per_image(c: dict) -> dict[str, float]:
        timed = c["timed"]
        return {**{stage: s / timed["images"] for stage, s in timed["seconds"].items()},
                "end to end": sum(timed["seconds"].values()) / timed["images"]}

    blip = r["captioners"]["blip"]
    blip_s, blip_flops = per_image(blip), blip["flops_per_image"]["caption"]
    rows = []
    for model_type, c in r["captioners"].items():
        seconds, timed, flops = per_image(c), c["timed"], c["flops_per_image"]
        rows.append([f"{c['family']} ({model_type})", c["mirrors"], num(c["parameters"] / 1e6),
                     num(1 / seconds["end to end"]),
                     *(num(1000 * seconds[stage]) for stage in timed["seconds"]),
                     num(flops["caption"] / 1e9), num(sum(flops.values()) / 1e9),
                     f"{timed['candidates'] / max(timed['ok'], 1):.1f}",
                     f"{timed['words'] / max(timed['candidates'], 1):.1f}",
                     f"{seconds['caption'] / blip_s['caption']:.3g}x", f"{flops['caption'] / blip_flops:.3g}x",
                     f"{seconds['end to end'] / blip_s['end to end']:.3g}x", f"{c['load_s']:.1f}"])
    return rows


def print_captioner_report(r: dict) -> None:
    print_header(r)
    stages = next(iter(r["captioners"].values()))["timed"]["seconds"]
    header = ["captioner", "configuration of", "M params", "images/s", *(f"{stage} ms/image" for stage in stages),
              "caption GFLOP/image", "end to end GFLOP/image", "candidates/image", "words/candidate",
              "caption time vs BLIP", "caption FLOPs vs BLIP", "end to end vs BLIP", "load s"]
    print_table(header, captioner_rows(r))
    print(f"{r['images_timed']} image(s) timed per captioner; every captioner samples {r['num_candidates']} "
          f"candidates of at most {r['mean_max_tokens']:.1f} new tokens on average and the same other stages rank "
          "and repair them. images/s is end to end. BLIP encodes an image once for all its candidates, and "
          "Qwen2-VL, SmolVLM and LLaVA run their prompt (image included) once per image; GIT runs image and "
          "prompt once per candidate (map_fns/generate_decode.py). Random weights rarely emit an end token: decoding runs to the max lengths, a worst case. FLOPs: torch "
          f"FlopCounterMode over {r['flop_images']} image(s) (matmul, conv, attention).")


# ---------------------------------------------------------------------------------------------- runs


def run_recipe(cfgs: dict, args, sync, result: dict) -> None:
    """The recipe's four stages timed and counted, then (models freed) the reference loop on a few images."""
    stages, result["load_s"] = load_stages(cfgs, args, sync)
    warm_up(stages, args, sync)
    images, keys = synthetic_images(args.images, args.seed, "bench")
    result["timed"], result["flops_per_image"] = measure(stages, images, keys, args)
    if args.profile:
        profile_batch(stages, images[: args.batch_size], keys[: args.batch_size], args.device, args.profile)
    del stages
    free_memory(args.device)

    if args.reference_images:
        ref = time_reference(cfgs, images[: args.reference_images], keys[: args.reference_images], args.device)
        result["reference"] = ref
        fast = result["timed"]["images"] / sum(result["timed"]["seconds"].values())
        result["ratio"] = fast / (ref["images"] / ref["seconds"])


def compare_captioners(cfgs: dict, args, sync, result: dict) -> None:
    """BLIP and each `--captioner` family in turn as the caption stage (its family's own prompt), the other
    stages loaded once and run on its candidates as always; each measured as `run_recipe` measures."""
    from map_fns.captioners import family_of

    other_names = tuple(stage.name for stage in model_stages() if stage.name != "caption")
    others, result["load_s"] = load_stages(cfgs, args, sync, names=other_names)
    images, keys = synthetic_images(args.images, args.seed, "bench")
    result["captioners"] = {}
    for model_type in args.captioner:
        path = captioner_path(model_type, args, cfgs["caption"].captioner)
        print(f"captioner {model_type}: {path}", flush=True)
        caption, load_s = load_stages({"caption": dataclasses.replace(cfgs["caption"], captioner=path)}, args, sync,
                                      names=("caption",))
        stages = {stage.name: caption.get(stage.name) or others[stage.name] for stage in model_stages()}
        warm_up(stages, args, sync)
        timed, flops = measure(stages, images, keys, args)
        result["captioners"][model_type] = {
            "family": family_of(model_type).name, "mirrors": mirrored_checkpoint(model_type, args.tiny),
            "parameters": parameter_count(path), "load_s": load_s["caption"], "timed": timed,
            "flops_per_image": flops,
        }
        del stages, caption
        free_memory(args.device)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    import torch
    from transformers.utils import logging as transformers_logging

    from map_fns.precision import MODEL_KINDS, resolve_dtype

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per model load
    sync = make_sync(args.device)
    device_name, peak = device_peak_tflops(args.device, args.peak_tflops)
    cfgs = stage_configs(args)
    result = {"device": args.device, "device_name": device_name, "precision": args.precision,
              "dtype": ", ".join(f"{kind} {str(resolve_dtype(args.precision, args.device, kind)).removeprefix('torch.')}"
                                 for kind in MODEL_KINDS),
              "batch_size": args.batch_size, "model_batch_size": args.model_batch_size, "torch": torch.__version__,
              "models": "tiny" if args.tiny else "real size, random weights", "peak_tflops": peak,
              "flop_images": args.flop_images, "images_timed": args.images, "images_seed": args.seed,
              "num_candidates": cfgs["caption"].num_candidates, "length_schedule": cfgs["caption"].length_schedule,
              "mean_max_tokens": sum(cfgs["caption"].max_lengths) / len(cfgs["caption"].max_lengths),
              "memory_how": "torch.cuda.max_memory_allocated during the stage's calls (all four models resident)"
              if args.device.startswith("cuda") else "process peak RSS (ru_maxrss) so far; the reference's includes "
              "the fast run's"}

    if args.captioner:
        compare_captioners(cfgs, args, sync, result)
        print_captioner_report(result)
    else:
        run_recipe(cfgs, args, sync, result)
        print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
