"""Starting a run or joining one: the settings every worker must share, the task list saved once, and the
one-line refusals (a changed run, unrecorded rows, the older per-process layout, a changed source)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import build
from builder.config import ConfigError, parse_config
from builder.resume import start_or_join
from builder.tasks import Piece, Task
from output.layout import PLAN_FILE, RUN_FILE
from output.store import OutputStore

PLAN = [Task(0, (Piece("a.parquet", 0, 10),)), Task(1, (Piece("a.parquet", 10, 15),))]


def _join(output, *flags, plan=PLAN):
    cfg = parse_config(["--output_dir", str(output), *flags])
    return start_or_join(OutputStore(str(output)), cfg, plan, lambda: pytest.fail("a plan was given"))


def _chunk(output):
    (output / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), output / "data" / "train-000000-00000.parquet")


def test_the_first_worker_records_the_settings_and_the_plan_and_later_ones_reuse_them(tmp_path):
    output = tmp_path / "out"
    assert _join(output, "--top_p", "0.5") == PLAN
    assert json.loads((output / RUN_FILE).read_text())["top_p"] == 0.5
    assert "lease_seconds" not in json.loads((output / RUN_FILE).read_text())  # how a run goes, not what it writes
    later = OutputStore(str(output))
    cfg = parse_config(["--output_dir", str(output), "--top_p", "0.5", "--lease_seconds", "9"])
    assert start_or_join(later, cfg, None, lambda: pytest.fail("the saved plan must be reused")) == PLAN


def test_a_changed_run_with_rows_is_refused_naming_each_setting_and_overwrite_starts_over(tmp_path):
    output = tmp_path / "out"
    _join(output, "--top_p", "0.5")
    _chunk(output)
    with pytest.raises(ConfigError, match=r"\(rows_per_task 20000 -> 7, top_p 0.5 -> 0.6\); .*--overwrite"):
        _join(output, "--top_p", "0.6", "--rows_per_task", "7")
    assert json.loads((output / RUN_FILE).read_text())["top_p"] == 0.5  # nothing touched
    _join(output, "--top_p", "0.6", "--overwrite")
    assert json.loads((output / RUN_FILE).read_text())["top_p"] == 0.6
    assert not (output / "data").exists()


def test_a_changed_command_after_an_attempt_that_wrote_no_rows_starts_over(tmp_path):
    """A first attempt that stopped before its first chunk (a mistyped model id, say) does not lock the
    output to its settings, nor to its task list."""
    output = tmp_path / "out"
    _join(output, "--top_p", "0.5")
    other = [Task(0, (Piece("a.parquet", 0, 15),))]
    assert _join(output, "--top_p", "0.6", "--rows_per_task", "15", plan=other) == other
    assert json.loads((output / PLAN_FILE).read_text()) == [task.to_dict() for task in other]


def test_unrecorded_rows_and_the_older_layout_are_refused_in_one_line(tmp_path):
    output = tmp_path / "out"
    _chunk(output)
    with pytest.raises(ConfigError, match="did not record its settings; add --overwrite"):
        _join(output)
    old = tmp_path / "old"
    (old / "progress").mkdir(parents=True)
    (old / "progress" / "rank-00001.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"older per-process layout \(progress/rank-00001.json\)"):
        _join(old)
    _join(old, "--overwrite")
    assert not (old / "progress").exists()


def test_a_source_that_changed_since_the_plan_was_saved_is_refused(tmp_path):
    output = tmp_path / "out"
    _join(output)
    grown = PLAN + [Task(2, (Piece("b.parquet", 0, 3),))]
    with pytest.raises(ConfigError, match="the source changed since the run .* make 3 tasks where tasks/plan.json "
                                          "lists 2"):
        _join(output, plan=grown)


def test_the_older_layout_gets_one_line_from_the_command(tmp_path, tiny_models, capsys):
    old = tmp_path / "old"
    (old / "progress").mkdir(parents=True)
    (old / "progress" / "run.json").write_text("{}")
    cache_dir = str(tiny_models.captioner).rsplit("/tiny-v1/", 1)[0]
    assert build.main(["--preset", "tiny", "--cache_dir", cache_dir, "--output_dir", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: --output_dir {old} holds an output of the older per-process layout "
                       "(progress/run.json), which this version cannot resume: finish it with the version that "
                       "started it, or add --overwrite to start over")


def test_overwrite_is_refused_when_several_processes_start_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert build.main(["--output_dir", str(tmp_path / "out"), "--overwrite"]) == 2
    assert "--overwrite with 4 processes would let each one delete the others' work" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
