"""What cannot work fails before anything is written, with one line naming the flag, the value and what to do,
printed once however many processes `accelerate launch` started, and exit status 2.

(torchrun does not pass a worker's exit status on: the launcher reports the workers' status in its own table and
exits 1. That table is the launcher's; the test reads the workers' status from it.)
"""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def _ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.timeout(240)
def test_a_missing_model_under_accelerate_launch_is_one_line_from_one_process(hub_server, tiny_models, tmp_path):
    output = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
         "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--captioner", "Salesforce/blip-image-captioning-larg", "--output_dir", str(output)],
        cwd=REPO, env={**hub_server.env(), "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=200)
    assert proc.returncode != 0
    assert _ours(proc.stderr) == [
        "error: --captioner 'Salesforce/blip-image-captioning-larg' cannot be found: the Hub has no repo "
        "Salesforce/blip-image-captioning-larg (check the spelling; a private repo needs a token: HF_TOKEN or "
        "`hf auth login`)"], proc.stderr[-3000:]
    assert not re.search(r"\[rank\d\]: Traceback", proc.stderr)  # no traceback from our processes
    # The first process to end exited 2; the launcher then stops the others with SIGTERM unless they ended too.
    root_cause = proc.stderr.split("Root Cause (first observed failure):")[1]
    assert re.findall(r"exitcode\s*:\s*(-?\d+)", root_cause) == ["2"], proc.stderr[-3000:]
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)) <= {"2", "-15"}, proc.stderr[-3000:]
    assert not output.exists()


def _single(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "build.py", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.timeout(300)
def test_without_accelerate_the_whole_output_is_the_one_line(hub_server, tiny_models, tmp_path):
    """A Hub source that is missing, one that lacks a URL and an image column, a blocklist that is not there, a
    filter on a column the source lacks, a model of the wrong kind."""
    folder = tmp_path / "alt-texts-only"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a cat", "a dog"]}), folder / "data" / "train-00000-of-00001.parquet")
    hub_server.add_repo("user/alt-texts-only", folder, repo_type="datasets")
    tiny = ["--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1])]
    cases = {
        "missing source": (["--source", "user/no-such-dataset"],
                           "--source 'user/no-such-dataset' cannot be found"),
        "no usable column": (["--source", "user/alt-texts-only"],
                             "user/alt-texts-only has no URL column (URL/url) and no image column"),
        "missing blocklist": (["--blocklist", str(tmp_path / "lists" / "urls.txt")],
                              f"--blocklist {tmp_path / 'lists' / 'urls.txt'}: no such file"),
        "filter on a missing column": (["--max_punsafe", "0.5"],
                                       "filter 'punsafe<=0.5' reads column 'punsafe', which is not a column of "),
        "unsupported captioner family": (["--captioner", tiny_models.repairer],
                                         f"--captioner {tiny_models.repairer!r} is a t5 model, which is not a "
                                         "supported captioner family (supported: BLIP (blip), BLIP-2 (blip-2), "),
    }
    for name, (argv, expected) in cases.items():
        output = tmp_path / name.replace(" ", "-")
        proc = _single([*tiny, *argv, "--output_dir", str(output)], hub_server.env())
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {expected}"), (name, proc.stderr)
        assert not output.exists(), name
