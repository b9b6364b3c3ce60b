"""Repeated row keys reuse the first row's results: the stages run once per distinct key, outputs unchanged."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import build
import map_fns.blip_decode
from builder.reuse import ResultReuse
from builder.stats import RunStats
from map_fns.caption import CaptionConfig, make_caption_fn
from map_fns.rank import RankConfig, make_rank_fn
from map_fns.status import FETCH_ERROR, NO_CAPTION, OK


class FakeStages:
    """Records the keys of every call; results depend only on the key. Keys starting with `empty` get
    no_caption, like a captioner that sampled nothing; non-ok rows pass through with None."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, batch):
        self.calls.append(list(batch["_row_key"]))
        ok = [status == OK for status in batch["status"]]
        failed = [is_ok and key.startswith("empty") for key, is_ok in zip(batch["_row_key"], ok)]
        return {
            "_candidates": [[f"{key} a", f"{key} b"] if is_ok else None for key, is_ok in zip(batch["_row_key"], ok)],
            "status": [NO_CAPTION if bad else status for status, bad in zip(batch["status"], failed)],
            "error": ["nothing sampled" if bad else error for error, bad in zip(batch["error"], failed)],
            "top_caption": [key.upper() if is_ok and not bad else None
                            for key, is_ok, bad in zip(batch["_row_key"], ok, failed)],
        }

    @property
    def computed(self) -> list[str]:
        return [key for call in self.calls for key in call]


def _batch(keys, statuses=None):
    statuses = statuses or [OK] * len(keys)
    return {"_row_key": list(keys), "status": list(statuses),
            "error": [None if s == OK else "boom" for s in statuses], "URL": [f"u/{k}" for k in keys]}


def _expected(keys, statuses=None):
    return FakeStages()(_batch(keys, statuses))


def test_repeats_within_a_batch_run_once_and_get_the_first_rows_outputs_in_order():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    keys = ["a", "b", "a", "c", "b", "a"]
    out = reuse.wrap(fake)(_batch(keys))
    assert fake.calls == [["a", "b", "c"]]
    assert out == _expected(keys)
    assert stats.reused_rows == 3


def test_repeats_across_batches_reuse_remembered_results():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    stages = reuse.wrap(fake)
    stages(_batch(["a", "b"]))
    out = stages(_batch(["c", "b", "a", "c"]))
    assert fake.calls == [["a", "b"], ["c"]]
    assert out == _expected(["c", "b", "a", "c"])
    assert stats.reused_rows == 3


def test_a_batch_of_remembered_keys_does_not_call_the_stages_and_keeps_every_column():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    stages = reuse.wrap(fake)
    stages(_batch(["a", "b"]))
    out = stages(_batch(["b", "a", "b"]))
    assert fake.calls == [["a", "b"]]
    assert out == _expected(["b", "a", "b"])
    assert stats.reused_rows == 3


def test_reused_rows_are_copies_not_shared_lists():
    reuse = ResultReuse()
    stages = reuse.wrap(FakeStages())
    first = stages(_batch(["a", "a"]))
    first["_candidates"][0].append("changed downstream")
    assert first["_candidates"][1] == ["a a", "a b"]
    assert stages(_batch(["a"]))["_candidates"] == [["a a", "a b"]]


def test_non_ok_rows_go_through_the_stages_and_are_neither_remembered_nor_reused():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    stages = reuse.wrap(fake)
    statuses = [FETCH_ERROR, FETCH_ERROR, OK]
    out = stages(_batch(["a", "a", "b"], statuses))
    assert fake.calls == [["a", "a", "b"]]
    assert out == _expected(["a", "a", "b"], statuses)
    out = stages(_batch(["a", "b"]))  # "a" comes ok now: computed, not copied from the failed rows
    assert fake.calls[-1] == ["a"]
    assert out == _expected(["a", "b"])
    assert stats.reused_rows == 1


def test_an_ok_row_after_a_failed_one_of_the_same_key_in_one_batch_is_computed():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    statuses = [FETCH_ERROR, OK, OK]
    out = reuse.wrap(fake)(_batch(["a", "a", "a"], statuses))
    assert fake.calls == [["a", "a"]]
    assert out == _expected(["a", "a", "a"], statuses)
    assert stats.reused_rows == 1


def test_a_result_that_ends_not_ok_is_shared_in_its_batch_but_not_remembered():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    stages = reuse.wrap(fake)
    out = stages(_batch(["empty", "empty"]))
    assert out["status"] == [NO_CAPTION, NO_CAPTION] and out == _expected(["empty", "empty"])
    stages(_batch(["empty"]))
    assert fake.calls == [["empty"], ["empty"]]
    assert stats.reused_rows == 1


def test_least_recently_used_keys_are_dropped_first():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(max_keys=2, on_reused=stats.add_reused)
    stages = reuse.wrap(fake)
    stages(_batch(["a", "b"]))
    stages(_batch(["a"]))  # "a" used again: "b" is now the least recent
    stages(_batch(["c"]))  # evicts "b"
    out = stages(_batch(["a", "b", "c"]))
    assert fake.calls == [["a", "b"], ["c"], ["b"]]
    assert out == _expected(["a", "b", "c"])
    assert stats.reused_rows == 3  # "a", then "a" and "c"


def test_empty_batches_keep_the_contract():
    fake, stats = FakeStages(), RunStats()
    reuse = ResultReuse(on_reused=stats.add_reused)
    assert reuse.wrap(fake)(_batch([])) == {"_candidates": [], "status": [], "error": [], "top_caption": []}
    assert stats.reused_rows == 0


def test_negative_max_keys_is_refused():
    with pytest.raises(ValueError, match="max_keys"):
        ResultReuse(max_keys=-1)


def test_real_caption_and_rank_give_the_same_results_with_one_caption_run_per_key(tiny_models, monkeypatch):
    images_seen = []
    real = map_fns.blip_decode.sample_candidate_ids

    def counting(model, pixel_values, *args, **kwargs):
        images_seen.append(len(pixel_values))
        return real(model, pixel_values, *args, **kwargs)

    monkeypatch.setattr(map_fns.blip_decode, "sample_candidate_ids", counting)  # before the stage imports it
    caption = make_caption_fn(CaptionConfig(captioner=tiny_models.captioner), "cpu")
    rank = make_rank_fn(RankConfig(ranker=tiny_models.ranker), "cpu")
    rng = np.random.default_rng(3)
    image_of = {key: Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for key in "abc"}
    keys = ["a", "b", "a", "c", "a", "b"]
    statuses = [OK, OK, OK, OK, FETCH_ERROR, OK]
    batch = {"_row_key": keys, "_image": [image_of[k] for k in keys], "status": statuses,
             "error": [None if s == OK else "boom" for s in statuses]}

    without_reuse = _one_after_another([caption, rank], batch)
    assert sum(images_seen) == 5
    images_seen.clear()
    stats = RunStats()
    reuse = [ResultReuse(on_reused=stats.add_reused), ResultReuse()]  # one per stage, as the run wraps them
    with_reuse = _one_after_another([reuse[0].wrap(caption), reuse[1].wrap(rank)], batch)
    assert sum(images_seen) == 3
    _assert_same_results(with_reuse, without_reuse)
    assert all(with_reuse["_candidates"][i] for i in (0, 1, 2, 3, 5)) and with_reuse["_candidates"][4] is None
    assert stats.reused_rows == 2

    images_seen.clear()
    again = _one_after_another([reuse[0].wrap(caption), reuse[1].wrap(rank)], batch)  # every ok key remembered now
    assert sum(images_seen) == 0
    _assert_same_results(again, without_reuse)


def _one_after_another(stages, batch: dict) -> dict:
    """The batch through `stages` in order, each seeing the columns the earlier ones wrote (as chained maps do)."""
    batch = dict(batch)
    for stage in stages:
        batch.update(stage(batch))
    return batch


def _assert_same_results(got: dict, expected: dict) -> None:
    """Same captions and statuses; similarities equal up to float rounding, since CLIP scored them in a
    batch of another size (BLAS kernels round differently for different shapes)."""
    def without_similarities(columns):
        return {name: values for name, values in columns.items() if name != "all_similarities"}

    assert without_similarities(got) == without_similarities(expected)
    for row_got, row_expected in zip(got["all_similarities"], expected["all_similarities"]):
        assert (row_got is None) == (row_expected is None)
        assert row_got is None or row_got == pytest.approx(row_expected, rel=1e-6)


def test_a_build_over_repeated_urls_runs_the_captioner_once_per_distinct_url(tmp_path, tiny_models, monkeypatch):
    """The real build, in this process: 12 rows over 4 URLs in batches of 4, so repeats span batches."""
    images_seen = []
    real = map_fns.blip_decode.sample_candidate_ids
    monkeypatch.setattr(map_fns.blip_decode, "sample_candidate_ids",
                        lambda model, pixel_values, *a, **k: images_seen.append(len(pixel_values))
                        or real(model, pixel_values, *a, **k))
    rng = np.random.default_rng(5)
    jpegs = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
        jpegs.append(buf.getvalue())
    order = [0, 1, 0, 2, 1, 0, 3, 2, 3, 1, 0, 2]
    source = tmp_path / "repeats.parquet"
    pq.write_table(pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in order],
                             "caption": [f"row {n}" for n in range(len(order))],
                             "image": pa.array([jpegs[i] for i in order], pa.binary())}), source)
    output = tmp_path / "out"
    cache_dir = Path(tiny_models.captioner).parents[1]
    assert build.main(["--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(source),
                       "--output_dir", str(output), "--batch_size", "4"]) == 0

    assert sum(images_seen) == 4
    rows = pq.read_table(sorted((output / "data").glob("*.parquet"))).to_pylist()
    assert [row["TEXT"] for row in rows] == [f"row {n}" for n in range(len(order))]  # every row, in order
    generated = ("top_caption", "top_caption_raw", "all_captions", "all_similarities", "rerank_similarities")
    for url in {row["URL"] for row in rows}:
        same = [row for row in rows if row["URL"] == url]
        assert all(row["status"] == OK for row in same)
        assert all({c: row[c] for c in generated} == {c: same[0][c] for c in generated} for row in same)
    assert json.loads((output / "stats.json").read_text())["reused_rows"] == 8
