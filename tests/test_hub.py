"""Publishing a real output folder to the loopback Hub, checked through the real huggingface_hub and datasets
clients (in subprocesses: both read HF_ENDPOINT and the token at import time)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard


REPO = Path(__file__).resolve().parents[1]
PUSH = """
import json, logging, sys
from builder.hub import push_output
logging.basicConfig(level=logging.INFO)
print(json.dumps(push_output(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))))
"""
LOAD = """
import json, sys
import datasets, pyarrow.parquet as pq
from huggingface_hub import DatasetCard, HfApi
datasets.config.USE_PARQUET_EXPORT = False
loaded = datasets.load_dataset(sys.argv[1], split="train")
pq.write_table(loaded.data.table, sys.argv[2])
streamed = list(datasets.load_dataset(sys.argv[1], split="train", streaming=True).decode(False))
print(json.dumps({"streamed_equal": streamed == loaded.to_list(),
                  "card": DatasetCard.load(sys.argv[1], repo_type="dataset").data.to_dict(),
                  "files": HfApi().list_repo_files(sys.argv[1], repo_type="dataset")}))
"""
CHECK_TOKEN = """
import sys
from builder.config import ConfigError
from builder.hub import check_can_push
try:
    check_can_push(sys.argv[1])
except ConfigError as err:
    sys.exit(f"error: {err}")
"""
DOWNLOAD = """
import sys
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
try:
    hf_hub_download(sys.argv[1], "README.md", repo_type="dataset")
except RepositoryNotFoundError:
    sys.exit("repository not found")
"""


def _python(code: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def _push(hub, output: Path, repo_id: str, **options) -> subprocess.CompletedProcess:
    """`push_output(output, repo_id, **options)` in a client of `hub`."""
    return _python(PUSH, str(output), repo_id, json.dumps(options), env=hub.env())


def _pushable(output: Path) -> set[str]:
    """Every file a final push must publish: all of the output but the tasks' records."""
    return {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()
            and not p.relative_to(output).as_posix().startswith("tasks/")}


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_models) -> Path:
    """A real OUTPUT_DIR: 6 rows of the bundled sample in 3 chunks, with card, config, stats and plots."""
    out = tmp_path_factory.mktemp("hub-out")
    proc = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--output_dir", str(out), "--max_samples", "6", "--rows_per_chunk", "2", "--batch_size", "2"],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(out.glob("data/train-*.parquet"))) == 3
    return out


@pytest.mark.timeout(120)
def test_pushed_dataset_loads_every_row_with_the_local_schema_and_card(output, hub_server, tmp_path):
    assert _push(hub_server, output, "user/captions").returncode == 0
    loaded = _python(LOAD, "user/captions", str(tmp_path / "loaded.parquet"), env=hub_server.env())
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    remote = pq.read_table(tmp_path / "loaded.parquet")
    local = pa.concat_tables(pq.read_table(f) for f in sorted(output.glob("data/*.parquet")))
    assert remote.schema.remove_metadata() == local.schema.remove_metadata()
    assert remote.to_pylist() == local.to_pylist()
    answer = json.loads(loaded.stdout)
    assert answer["streamed_equal"]  # streaming reads the files by byte ranges
    assert answer["card"] == DatasetCard.load(output / "README.md").data.to_dict()
    assert set(answer["files"]) == _pushable(output) | {".gitattributes"}  # no tasks/, nothing else


@pytest.mark.timeout(60)
def test_readme_is_committed_after_all_the_data(output, hub_server):
    assert _push(hub_server, output, "user/captions").returncode == 0
    *_, data_commit, card_commit = hub_server.repo("user/captions").history()
    assert card_commit.changed == ("README.md",)
    assert set(data_commit.changed) == _pushable(output) - {"README.md"}


@pytest.mark.timeout(60)
def test_a_large_push_goes_in_commits_of_bounded_size_then_the_card(output, hub_server):
    assert _push(hub_server, output, "user/captions", files_per_commit=2).returncode == 0
    _, *data_commits, card_commit = hub_server.repo("user/captions").history()  # after .gitattributes
    data = _pushable(output) - {"README.md"}
    assert len(data_commits) == -(-len(data) // 2) and all(len(c.changed) <= 2 for c in data_commits)
    assert set().union(*(c.changed for c in data_commits)) == data
    assert card_commit.changed == ("README.md",)


@pytest.mark.timeout(60)
def test_pushing_an_unchanged_folder_again_sends_nothing_and_commits_nothing(output, hub_server):
    assert _push(hub_server, output, "user/captions").returncode == 0
    history, puts = hub_server.repo("user/captions").history(), hub_server.lfs_puts
    again = _push(hub_server, output, "user/captions")
    assert again.returncode == 0, again.stderr[-3000:]
    assert hub_server.lfs_puts == puts and set(hub_server.lfs_uploads.values()) == {1}
    assert hub_server.repo("user/captions").history() == history


@pytest.mark.timeout(120)
def test_a_push_cut_off_midway_commits_nothing_and_a_rerun_finishes_without_resending(output, hub_server):
    hub_server.drop_lfs_puts(2)  # the first LFS upload gets through, then every connection drops
    cut = _push(hub_server, output, "user/captions")
    assert cut.returncode != 0
    error = next(line for line in cut.stderr.splitlines() if line.startswith("builder.hub.PushError: "))
    assert "user/captions" in error and "re-run the same command to resume" in error, error
    assert [c.changed for c in hub_server.repo("user/captions").history()] == [(".gitattributes",)]  # atomic
    sent_before_cut = set(hub_server.lfs_uploads)
    assert len(sent_before_cut) == 1

    hub_server.heal()
    rerun = _push(hub_server, output, "user/captions")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sent_before_cut < set(hub_server.lfs_uploads) and set(hub_server.lfs_uploads.values()) == {1}
    assert set(hub_server.repo("user/captions").commit("main").files) == _pushable(output) | {".gitattributes"}


@pytest.mark.timeout(60)
def test_a_connection_dropped_once_is_retried_and_the_push_succeeds(output, hub_server):
    hub_server.drop_lfs_puts(1, count=1)
    pushed = _push(hub_server, output, "user/captions")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert hub_server.lfs_puts == len(hub_server.lfs_uploads) + 1 and set(hub_server.lfs_uploads.values()) == {1}
    assert set(hub_server.repo("user/captions").commit("main").files) == _pushable(output) | {".gitattributes"}


@pytest.mark.timeout(60)
def test_chunks_pushed_during_a_run_go_to_their_branch_without_card_or_temp_files(output, hub_server, tmp_path):
    running = shutil.copytree(output, tmp_path / "running")
    (running / "data" / ".train-00000-00003.parquet.tmp").write_bytes(b"half a chunk")
    assert _push(hub_server, running, "user/captions", revision="in-progress", final=False).returncode == 0
    repo = hub_server.repo("user/captions")
    assert set(repo.commit("in-progress").files) == {p for p in _pushable(output) if p.startswith("data/")} | {
        ".gitattributes"}
    assert set(repo.commit("main").files) == {".gitattributes"}


@pytest.mark.timeout(90)
def test_chunks_an_earlier_push_of_the_run_sent_are_not_read_again(output, hub_server, tmp_path):
    running = shutil.copytree(output, tmp_path / "running")
    first = _push(hub_server, running, "user/captions", final=False)
    assert first.returncode == 0, first.stderr[-3000:]
    sent = json.loads(first.stdout.splitlines()[-1])
    assert set(sent) == {p for p in _pushable(output) if p.startswith("data/")}
    history = hub_server.repo("user/captions").history()

    (running / sent[0]).write_bytes(b"changed on disk after it was pushed")
    skipped = _push(hub_server, running, "user/captions", final=False, skip=sent)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert json.loads(skipped.stdout.splitlines()[-1]) == []
    assert hub_server.repo("user/captions").history() == history  # the changed file was never read

    unskipped = _push(hub_server, running, "user/captions", final=False)  # without skip it is read, and sent
    assert unskipped.returncode == 0, unskipped.stderr[-3000:]
    assert hub_server.repo("user/captions").history()[-1].changed == (sent[0],)


@pytest.mark.timeout(60)
def test_check_can_push_needs_a_token_and_the_token_never_leaks(output, hub_server, tmp_path):
    no_token = _python(CHECK_TOKEN, "user/captions", env=hub_server.env(token=False))
    assert no_token.returncode == 1
    assert no_token.stderr.strip().splitlines()[-1] == (
        "error: --push_to_hub user/captions needs a Hub token: set HF_TOKEN or run `hf auth login`")
    assert _python(CHECK_TOKEN, "user/captions", env=hub_server.env()).returncode == 0

    pushed = _push(hub_server, output, "user/captions")
    assert pushed.returncode == 0
    assert hub_server.token not in pushed.stdout + pushed.stderr
    assert not [p for p in output.rglob("*") if p.is_file() and hub_server.token.encode() in p.read_bytes()]


@pytest.mark.timeout(60)
def test_a_private_repo_is_created_private_and_hidden_from_anonymous_downloads(output, hub_server):
    assert _push(hub_server, output, "user/private", private=True).returncode == 0
    assert hub_server.repo("user/private").private
    anonymous = _python(DOWNLOAD, "user/private", env=hub_server.env(token=False))
    assert anonymous.stderr.strip().splitlines()[-1] == "repository not found"
    assert _python(DOWNLOAD, "user/private", env=hub_server.env()).returncode == 0


@pytest.mark.timeout(300)
def test_build_with_push_every_publishes_each_chunk_as_it_lands_then_the_card(hub_server, tiny_models, tmp_path):
    out = tmp_path / "out"
    built = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1]),
         "--output_dir", str(out), "--max_samples", "6", "--rows_per_chunk", "2", "--batch_size", "2",
         "--push_to_hub", "user/built", "--push_every", "1"],
        cwd=REPO, env=hub_server.env(), capture_output=True, text=True, timeout=240,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert hub_server.token not in built.stdout + built.stderr

    chunks = sorted(p.relative_to(out).as_posix() for p in out.glob("data/train-*.parquet"))
    assert len(chunks) == 3
    creation, *pushes = hub_server.repo("user/built").history()
    assert [c.changed for c in pushes[:3]] == [(chunk,) for chunk in chunks]  # one push per finished chunk
    assert pushes[-1].changed == ("README.md",) and len(pushes) == 5
    assert set(pushes[-1].files) == _pushable(out) | {".gitattributes"}

    loaded = _python(LOAD, "user/built", str(tmp_path / "loaded.parquet"), env=hub_server.env())
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    local = pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("data/*.parquet")))
    assert pq.read_table(tmp_path / "loaded.parquet").to_pylist() == local.to_pylist()


@pytest.mark.timeout(120)
def test_build_without_a_token_stops_before_any_work(hub_server, tmp_path):
    out = tmp_path / "out"
    refused = subprocess.run(
        [sys.executable, "build.py", "--preset", "tiny", "--output_dir", str(out), "--push_to_hub", "user/built"],
        cwd=REPO, env=hub_server.env(token=False), capture_output=True, text=True, timeout=100,
    )
    assert refused.returncode != 0
    assert "--push_to_hub user/built needs a Hub token" in refused.stderr.strip().splitlines()[-1]
    assert not (out / "data").exists()


@pytest.mark.timeout(300)
def test_a_build_whose_push_failed_keeps_its_output_and_the_same_command_finishes_the_push(
        hub_server, tiny_models, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "build.py", "--preset", "tiny", "--cache_dir",
               str(Path(tiny_models.captioner).parents[1]), "--output_dir", str(out), "--max_samples", "4",
               "--push_to_hub", "user/built"]
    hub_server.drop_lfs_puts(1)
    failed = subprocess.run(command, cwd=REPO, env=hub_server.env(), capture_output=True, text=True, timeout=240)
    assert failed.returncode == 1
    error = next(line for line in failed.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: pushing") and "re-run the same command to resume" in error, error
    written = {p: p.stat().st_mtime_ns for p in out.glob("data/*.parquet")}
    assert written

    hub_server.heal()
    rerun = subprocess.run(command, cwd=REPO, env=hub_server.env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("data/*.parquet")} == written  # nothing captioned again
    assert set(hub_server.repo("user/built").commit("main").files) == _pushable(out) | {".gitattributes"}
