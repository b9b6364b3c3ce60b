"""Adding a stage is one module and one registry entry: a toy sixth stage, defined here, registered, runs end to
end; its flag parses and is saved, and its column reaches the output and the card."""

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import build
from map_fns.flags import at_least
from map_fns.registry import STAGES
from map_fns.stage import Column, Stage, on_ok_rows
from map_fns.status import OK

# --- the stage: what its module would hold -------------------------------------------------------------------


@dataclass
class WordCountConfig:
    long_caption_words: int = field(default=12, metadata={"help": "Captions with more words count as long."})

    def __post_init__(self):
        at_least(self, "long_caption_words", 1)


WRITES = (Column("caption_words", "int32"), Column("long_caption", "bool"))


def make_word_count_fn(cfg: WordCountConfig, context):
    def count(rows: dict[str, list]) -> dict[str, list]:
        words = [len(caption.split()) for caption in rows["top_caption"]]
        return {"caption_words": words, "long_caption": [n > cfg.long_caption_words for n in words]}

    return on_ok_rows(count, WRITES)


WORD_COUNT = Stage("word_count", WordCountConfig, make_word_count_fn, reads=("top_caption", "status"), writes=WRITES,
                   recipe=False, reuse=False)

# --- the test -----------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    """The registry entry, for this test only."""
    STAGES.append(WORD_COUNT)
    try:
        yield
    finally:
        STAGES.remove(WORD_COUNT)


@pytest.mark.timeout(300)
def test_a_registered_stage_runs_end_to_end_and_its_columns_reach_the_output(registered, tiny_models, tmp_path):
    output = tmp_path / "out"
    cache_dir = Path(tiny_models.captioner).parents[1]
    status = build.main(["--preset", "tiny", "--cache_dir", str(cache_dir), "--output_dir", str(output),
                         "--max_samples", "6", "--batch_size", "3", "--long_caption_words", "5"])
    assert status == 0

    table = pq.read_table(output / "data")
    assert table.column_names[-2:] == ["caption_words", "long_caption"]
    assert str(table.schema.field("caption_words").type) == "int32"
    rows = table.to_pylist()
    assert rows and any(row["status"] == OK for row in rows)
    for row in rows:
        if row["status"] == OK:
            assert row["caption_words"] == len(row["top_caption"].split())
            assert row["long_caption"] == (row["caption_words"] > 5)
        else:
            assert row["caption_words"] is None and row["long_caption"] is None
    assert yaml.safe_load((output / "build_config.yaml").read_text())["long_caption_words"] == 5
    assert "caption_words" in (output / "README.md").read_text()


def test_a_bad_value_of_its_flag_is_one_line_naming_it(registered, tmp_path, capsys):
    assert build.main(["--output_dir", str(tmp_path / "out"), "--long_caption_words", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --long_caption_words must be >= 1, got 0"


def test_a_stage_redeclaring_a_column_with_another_type_is_refused():
    from output.schema import generated_columns

    clash = Stage("clash", WordCountConfig, make_word_count_fn, reads=("status",), writes=(Column("status", "int32"),))
    STAGES.append(clash)
    try:
        with pytest.raises(ValueError, match="stage 'clash' declares column 'status' as int32, an earlier stage as string"):
            generated_columns()
    finally:
        STAGES.remove(clash)
