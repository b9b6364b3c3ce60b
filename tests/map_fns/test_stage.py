"""The stage declarations: the registry chains, the ok-rows helper fills back, calls keep to what they declare."""

import dataclasses

import pytest

from map_fns.registry import STAGES, check_chain
from map_fns.stage import ROW_KEY, Column, Stage, as_declared, on_ok_rows
from map_fns.status import FETCH_ERROR, NO_CAPTION, OK

SOURCE_COLUMNS = {"URL", "TEXT", ROW_KEY}


def test_the_registered_stages_chain_from_the_source_columns():
    check_chain(STAGES, SOURCE_COLUMNS)


def test_a_stage_reading_a_column_nothing_before_it_writes_is_refused():
    by_name = {stage.name: stage for stage in STAGES}
    swapped = [by_name["fetch"], by_name["rank"], by_name["caption"], by_name["rerank"], by_name["repair"]]
    with pytest.raises(ValueError, match="stage 'rank' reads '_candidates'"):
        check_chain(swapped, SOURCE_COLUMNS)
    with pytest.raises(ValueError, match="stage 'caption' reads '_row_key'"):
        check_chain(STAGES, {"URL", "TEXT"})


def test_every_stage_declares_a_config_section_of_its_own_and_typed_output_columns():
    assert len({stage.name for stage in STAGES}) == len(STAGES)
    for stage in STAGES:
        assert dataclasses.is_dataclass(stage.config)
        for column in stage.writes:
            assert column.internal == (column.dtype is None), column
        if stage.model:
            assert stage.model in {f.name for f in dataclasses.fields(stage.config)}


def _batch():
    return {"status": [OK, FETCH_ERROR, OK, NO_CAPTION], "error": [None, "HTTP 404", None, "empty"],
            "x": [1, 2, 3, 4]}


def test_only_ok_rows_are_computed_and_the_others_keep_their_values_or_get_none():
    seen = []

    def compute(rows):
        seen.append(rows)
        return {"y": [10 * x for x in rows["x"]], "status": [NO_CAPTION, OK], "error": ["empty", None]}

    writes = (Column("y", "int32"), Column("status", "string"), Column("error", "string"))
    out = on_ok_rows(compute, writes)(_batch())
    assert seen == [{"status": [OK, OK], "error": [None, None], "x": [1, 3]}]
    assert out == {"y": [10, None, 30, None], "status": [NO_CAPTION, FETCH_ERROR, OK, NO_CAPTION],
                   "error": ["empty", "HTTP 404", None, "empty"]}


def test_a_batch_without_ok_rows_never_reaches_the_computation():
    def compute(rows):
        raise AssertionError("called")

    batch = {"status": [FETCH_ERROR], "error": ["HTTP 404"]}
    assert on_ok_rows(compute, (Column("y", "string"),))(batch) == {"y": [None]}


def test_a_computation_returning_the_wrong_number_of_rows_is_an_error():
    with pytest.raises(ValueError):
        on_ok_rows(lambda rows: {"y": [1]}, (Column("y", "int32"),))(_batch())


def test_a_call_returning_an_undeclared_column_is_refused():
    stage = Stage("toy", object, lambda cfg, context: None, reads=("x",), writes=(Column("y", "int32"),))
    assert as_declared(stage, lambda batch: {"y": batch["x"]})({"x": [1]}) == {"y": [1]}
    with pytest.raises(RuntimeError, match="stage 'toy' returned columns \\['y', 'z'\\], but declares \\['y'\\]"):
        as_declared(stage, lambda batch: {"y": batch["x"], "z": batch["x"]})({"x": [1]})
