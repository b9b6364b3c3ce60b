"""`OutputStore` on a local folder and on a loopback S3 server: the same assertions, through the real clients.

Every result is read back by a client of its own (fsspec opened from the URL and storage options, pyarrow,
`datasets.load_dataset`, a second process), never only through the store that wrote it.
"""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from output.durable import temp_path
from output.store import OutputStore


@dataclass(frozen=True)
class Location:
    """Where a run's output goes, and how an outside reader or another process reaches it."""

    url: str
    storage_options: dict = field(default_factory=dict)
    env: dict[str, str] | None = None  # for a subprocess; None: inherit this process's

    def read_bytes(self, name: str) -> bytes:
        with fsspec.open(f"{self.url}/{name}", "rb", **self.storage_options) as f:
            return f.read()


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """A run's output location (`.../run`, below a folder or a bucket other runs may share)."""
    if request.param == "local":
        return Location(str(tmp_path / "run"))
    bucket = request.getfixturevalue("s3_bucket")
    return Location(f"{bucket.url}/run", bucket.storage_options, bucket.env)


def write_from_another_process(location: Location, name: str, data: bytes) -> None:
    """`data` at `name`, written by a separate Python process with fsspec (as another worker would)."""
    script = "import sys, fsspec\nwith fsspec.open(sys.argv[1], 'wb') as f:\n    f.write(sys.argv[2].encode())"
    subprocess.run([sys.executable, "-c", script, f"{location.url}/{name}", data.decode()],
                   env=location.env, check=True, timeout=60)


def test_json_round_trips_and_lands_at_its_name(location: Location):
    value = {"models": ["Salesforce/blip-image-captioning-large"], "seed": 3, "temperature": 0.75,
             "source": None, "resume": True, "caption": "un café à Zürich", "tasks": [[0, 100], [100, 250]]}
    store = OutputStore(location.url)
    store.write_json("tasks/run.json", value)

    assert store.read_json("tasks/run.json") == value
    assert json.loads(location.read_bytes("tasks/run.json")) == value


def test_missing_json_gives_the_default(location: Location):
    store = OutputStore(location.url)
    store.write_json("tasks/run.json", {"seed": 1})  # the folder exists; the file asked for does not

    assert store.read_json("tasks/plan.json") is None
    assert store.read_json("tasks/plan.json", default={"tasks": []}) == {"tasks": []}
    assert not store.exists("tasks/plan.json")


CHUNK_0 = pa.table({"URL": ["http://a.test/1.jpg", "http://a.test/2.jpg"], "top_caption": ["a dog", None],
                    "all_similarities": [[0.25, 0.5], []]})
CHUNK_1 = pa.table({"URL": ["http://a.test/3.jpg"], "top_caption": ["a red bus"], "all_similarities": [[0.125]]})
ROWS_IN_NAME_ORDER = [
    {"URL": "http://a.test/1.jpg", "top_caption": "a dog", "all_similarities": [0.25, 0.5]},
    {"URL": "http://a.test/2.jpg", "top_caption": None, "all_similarities": []},
    {"URL": "http://a.test/3.jpg", "top_caption": "a red bus", "all_similarities": [0.125]},
]


def test_parquet_reads_back_with_pyarrow_and_datasets(location: Location, tmp_path: Path):
    store = OutputStore(location.url)
    store.write_parquet("data/train-000001-00000.parquet", CHUNK_1)  # written out of order on purpose
    store.write_parquet("data/train-000000-00000.parquet", CHUNK_0)

    with fsspec.open(f"{location.url}/data/train-000000-00000.parquet", "rb", **location.storage_options) as f:
        assert pq.read_table(f).equals(CHUNK_0)
    loaded = datasets.load_dataset("parquet", data_files=f"{location.url}/data/*.parquet", split="train",
                                   storage_options=location.storage_options, cache_dir=str(tmp_path / "cache"))
    assert loaded.to_list() == ROWS_IN_NAME_ORDER


def test_glob_lists_names_under_the_root_sorted(location: Location):
    store = OutputStore(location.url)
    for name in ["data/train-000010-00000.parquet", "data/train-000002-00001.parquet",
                 "data/train-000002-00000.parquet", "tasks/done/000002.json"]:
        store.write_bytes(name, b"x")
    OutputStore(location.url + "-2").write_bytes("data/train-000000-00000.parquet", b"x")  # a sibling run

    assert store.glob("data/*.parquet") == ["data/train-000002-00000.parquet", "data/train-000002-00001.parquet",
                                            "data/train-000010-00000.parquet"]
    assert store.glob("tasks/done/*.json") == ["tasks/done/000002.json"]
    assert store.glob("tasks/progress/*.json") == []


def test_glob_never_matches_hidden_temp_files(location: Location):
    store = OutputStore(location.url)
    store.write_bytes("tasks/progress/000000.json", b"{}")
    leftover = temp_path(Path("tasks/progress/000001.json")).as_posix()  # a writer killed mid-file leaves one
    store.write_bytes(leftover, b"{")

    assert store.glob("tasks/progress/*") == ["tasks/progress/000000.json"]


def test_delete_removes_a_folder_and_all_under_it(location: Location):
    store = OutputStore(location.url)
    for name in ["tasks/leases/000000.json", "tasks/leases/old/000001.json", "tasks/plan.json"]:
        store.write_bytes(name, b"{}")

    store.delete("tasks/leases")
    store.delete("tasks/never-written")

    assert not store.exists("tasks/leases")
    assert not store.exists("tasks/leases/old/000001.json")
    assert store.glob("tasks/*") == ["tasks/plan.json"]
    assert location.read_bytes("tasks/plan.json") == b"{}"


@pytest.fixture
def listed_before_another_worker(location: Location) -> OutputStore:
    """A store that has listed the done markers (one so far), after which another process writes a second."""
    store = OutputStore(location.url)
    store.write_json("tasks/done/000000.json", {"rows": 2})
    assert not store.exists("tasks/done/000001.json")
    assert store.glob("tasks/done/*.json") == ["tasks/done/000000.json"]  # the listing s3fs keeps
    write_from_another_process(location, "tasks/done/000001.json", b'{"rows": 1}')
    return store


def test_glob_sees_a_file_another_process_wrote(listed_before_another_worker: OutputStore):
    assert listed_before_another_worker.glob("tasks/done/*.json") == ["tasks/done/000000.json",
                                                                     "tasks/done/000001.json"]


def test_exists_sees_a_file_another_process_wrote(listed_before_another_worker: OutputStore):
    assert listed_before_another_worker.exists("tasks/done/000001.json")
    assert listed_before_another_worker.read_json("tasks/done/000001.json") == {"rows": 1}


def test_overwriting_replaces_the_whole_file(location: Location):
    store = OutputStore(location.url)
    store.write_json("tasks/progress/000000.json", {"chunks": list(range(200)), "rows": 51200})
    store.write_json("tasks/progress/000000.json", {"chunks": [0], "rows": 256})

    assert json.loads(location.read_bytes("tasks/progress/000000.json")) == {"chunks": [0], "rows": 256}
    assert store.glob("tasks/progress/*.json") == ["tasks/progress/000000.json"]
