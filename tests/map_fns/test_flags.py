"""`map_fns.flags`: the shared checks say `--flag must RULE, got VALUE` on one line, at the right bounds, and
importing them (and the stage configs that use them) loads no torch."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from map_fns.flags import (NONE, ConfigError, FlagParser, above, at_least, clip_spec, in_range, model_or_none,
                           parse_clip_spec)

REPO = Path(__file__).resolve().parents[2]


def _message(check, value, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        check(SimpleNamespace(x=value), "x", *args, **kwargs)
    return str(err.value)


def _passes(check, value, *args, **kwargs) -> bool:
    try:
        check(SimpleNamespace(x=value), "x", *args, **kwargs)
    except ConfigError:
        return False
    return True


def test_at_least_includes_its_bound():
    assert _passes(at_least, 1, 1) and _passes(at_least, 0, 0)
    assert _message(at_least, 0, 1) == "--x must be >= 1, got 0"
    assert _message(at_least, -0.5, 0) == "--x must be >= 0, got -0.5"


def test_at_least_integer_refuses_a_float_even_above_the_bound():
    assert _passes(at_least, 3, 1, integer=True)
    assert _message(at_least, 2.5, 1, integer=True) == "--x must be an integer >= 1, got 2.5"
    assert _message(at_least, "64", 1, integer=True) == "--x must be an integer >= 1, got '64'"


def test_above_excludes_its_bound():
    assert _passes(above, 0.001, 0)
    assert _message(above, 0.0, 0) == "--x must be > 0, got 0.0"


def test_in_range_is_open_below_and_closed_above():
    assert _passes(in_range, 1, 0, 1) and _passes(in_range, 1e-9, 0, 1)
    assert _message(in_range, 0, 0, 1) == "--x must be in (0, 1], got 0"
    assert _message(in_range, 1.0000001, 0, 1) == "--x must be in (0, 1], got 1.0000001"


@pytest.mark.parametrize("check, args", [(at_least, (0,)), (above, (0,)), (in_range, (0, 1))])
def test_nan_is_refused_by_every_numeric_check(check, args):
    """`--top_p=nan` or a YAML `.nan` parses as a float; no bound holds for it."""
    assert "got nan" in _message(check, float("nan"), *args)


def test_model_or_none():
    assert _passes(model_or_none, "org/model") and _passes(model_or_none, NONE)
    for bad in ("", "   ", None):
        assert _message(model_or_none, bad) == f"--x must name a model or be 'none', got {bad!r}"


def test_clip_spec_names_the_flag_and_takes_none_only_where_allowed():
    assert _passes(clip_spec, "ViT-L-14/openai") and _passes(clip_spec, NONE, none_allowed=True)
    message = _message(clip_spec, NONE)
    assert message.startswith("--x: invalid CLIP spec 'none'") and "\n" not in message
    assert _message(clip_spec, "None", none_allowed=True).startswith("--x: invalid CLIP spec 'None'")


def test_parse_clip_spec_errors_are_config_errors():
    with pytest.raises(ConfigError, match="invalid CLIP spec 'ViT-L-14'"):
        parse_clip_spec("ViT-L-14")


def test_flag_parser_raises_instead_of_exiting():
    parser = FlagParser(prog="tool")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(ConfigError, match="the following arguments are required: --n"):
        parser.parse_args([])
    with pytest.raises(ConfigError, match="argument --n: invalid int value: 'abc'"):
        parser.parse_args(["--n", "abc"])


def test_flags_and_stage_configs_import_no_torch():
    code = ("import sys\n"
            "import map_fns.flags, map_fns.caption, map_fns.fetch, map_fns.rank, map_fns.rerank, map_fns.repair\n"
            "map_fns.rank.RankConfig(); map_fns.rerank.RerankConfig(reranker='none')\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
