"""`datasets.load_dataset(OUTPUT_DIR, split="train")`, what the README tells users to run, reads the rows the
folder holds now, through one shared `datasets` cache: after a re-run into the folder, and for another
folder of the same name."""

import datasets
import pytest

from dataset_card.card import write_card
from tests.dataset_card.conftest import url_row, write_output


def carded_output(path, run: str, rows: int) -> list[str]:
    """An output of `rows` rows, with its card, whose alt-texts name the run; returns them in output order."""
    texts = [f"{run} row {i}" for i in range(rows)]
    output = write_output(path, [url_row(f"http://example.invalid/{run}/{i}.jpg", text)
                                 for i, text in enumerate(texts)])
    write_card(output.path, output.chunks, output.inputs, output.stats)
    return texts


def loaded_texts(path) -> list[str]:
    return list(datasets.load_dataset(str(path), split="train")["TEXT"])


@pytest.fixture(autouse=True)
def shared_cache(tmp_path, monkeypatch):
    """The default cache, moved to one empty folder that every load of a test shares."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    yield tmp_path / "cache"
    assert any((tmp_path / "cache").iterdir())  # the loads did go through it


def test_two_folders_of_the_same_name_each_load_their_own_rows(tmp_path):
    in_a = carded_output(tmp_path / "a" / "out", "run in a", 300)
    in_b = carded_output(tmp_path / "b" / "out", "run in b", 364)
    assert loaded_texts(tmp_path / "a" / "out") == in_a
    assert loaded_texts(tmp_path / "b" / "out") == in_b
    assert loaded_texts(tmp_path / "a" / "out") == in_a


def test_a_rerun_into_the_folder_loads_the_new_rows(tmp_path):
    output = tmp_path / "out"
    first = carded_output(output, "first run", 300)
    assert loaded_texts(output) == first
    for chunk in output.glob("data/*.parquet"):
        chunk.unlink()
    second = carded_output(output, "second run", 300)  # as many rows as before, other ones
    assert loaded_texts(output) == second
