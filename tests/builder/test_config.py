"""`parse_config`: the reference defaults, defaults < preset < YAML < flags, one-line errors, round trip.

Everything here is torch-free by design: flags are checked in a second, before any model is loaded.
"""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.config import BuildConfig, ConfigError, config_text, parse_config, sections
from builder.flag_files import bundled_presets
from builder.tiny_models import tiny_model_paths
from map_fns.caption import CaptionConfig
from map_fns.captioners import family_of, prompt_for
from map_fns.fetch import FetchConfig
from map_fns.rank import RankConfig
from map_fns.repair import RepairConfig
from map_fns.rerank import RerankConfig

REPO = Path(__file__).resolve().parents[2]
MODEL_FLAGS = ("captioner", "ranker", "reranker", "repairer")


def _models(cfg: BuildConfig) -> dict[str, str]:
    return {"captioner": cfg.caption.captioner, "ranker": cfg.rank.ranker, "reranker": cfg.rerank.reranker,
            "repairer": cfg.repair.repairer}


def _tiny(cache_dir) -> dict[str, str]:
    paths = tiny_model_paths(cache_dir)
    return {flag: getattr(paths, flag) for flag in MODEL_FLAGS}


def _yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


# --- defaults ------------------------------------------------------------------------------------------


def test_defaults_are_the_reference_recipe(tmp_path):
    cfg = parse_config(["--output_dir", str(tmp_path)])

    # every section is its dataclass's defaults, nothing else set
    assert cfg.caption == CaptionConfig()
    assert cfg.rank == RankConfig()
    assert cfg.rerank == RerankConfig()
    assert cfg.repair == RepairConfig()
    assert cfg.fetch == FetchConfig()
    assert cfg.source.source is None and cfg.source.max_samples is None
    assert cfg.run.output_dir == str(tmp_path) and cfg.run.preset == "laion-coco" and cfg.run.config is None

    # ... and those defaults are DESIGN §2's numbers
    assert cfg.caption.top_p == 0.2427084604681384
    assert cfg.caption.top_k == 9607
    assert cfg.caption.num_candidates == 40
    assert cfg.caption.min_length == 5
    assert cfg.caption.repetition_penalty == 1.3
    assert cfg.caption.eos_stop_probability == 0.17937666742679637
    assert prompt_for(family_of("blip"), cfg.caption.caption_prompt) == "a picture of "
    assert cfg.caption.max_lengths == [20] * 8 + [30] * 16 + [45] * 16
    assert cfg.rank.keep_top == 5
    assert cfg.repair.repair_prefix == "grammar: " and cfg.repair.repair_num_beams == 2
    assert _models(cfg) == {
        "captioner": "Salesforce/blip-image-captioning-large",
        "ranker": "ViT-L-14/openai",
        "reranker": "RN50x64/openai",
        "repairer": "vennify/t5-base-grammar-correction",
    }


# --- precedence: defaults < preset < YAML < flags -------------------------------------------------------


def test_flags_beat_yaml_which_beats_defaults(tmp_path):
    config = _yaml(tmp_path / "run.yaml", {"output_dir": str(tmp_path / "out"), "batch_size": 3, "top_k": 7})

    from_yaml = parse_config(["--config", config])
    assert (from_yaml.run.batch_size, from_yaml.caption.top_k) == (3, 7)
    assert from_yaml.run.output_dir == str(tmp_path / "out")
    assert from_yaml.run.config == config

    both = parse_config(["--config", config, "--batch_size", "5"])
    assert (both.run.batch_size, both.caption.top_k) == (5, 7)
    flag_first = parse_config(["--batch_size", "5", "--config", config])  # position of --config does not matter
    assert (flag_first.run.batch_size, flag_first.caption.top_k) == (5, 7)
    # untouched keys keep their defaults
    assert both.caption.top_p == CaptionConfig().top_p and both.rank == RankConfig()


def test_preset_tiny_points_the_models_into_the_cache_dir_and_flags_win(tmp_path):
    cache = tmp_path / "cache"
    base = ["--output_dir", str(tmp_path / "out"), "--preset", "tiny", "--cache_dir", str(cache)]

    cfg = parse_config(base)
    assert cfg.run.preset == "tiny" and cfg.run.cache_dir == str(cache)
    assert _models(cfg) == _tiny(cache)
    assert not cache.exists(), "parsing flags must not build any model"

    cfg = parse_config(base + ["--repairer", "none"])
    assert _models(cfg) == {**_tiny(cache), "repairer": "none"}


def test_yaml_beats_preset_and_flags_beat_yaml(tmp_path):
    cache = tmp_path / "cache"
    config = _yaml(tmp_path / "run.yaml", {"ranker": "local-dir:/from/yaml", "reranker": "none"})
    base = ["--output_dir", str(tmp_path), "--preset", "tiny", "--cache_dir", str(cache), "--config", config]

    cfg = parse_config(base)
    assert _models(cfg) == {**_tiny(cache), "ranker": "local-dir:/from/yaml", "reranker": "none"}
    cfg = parse_config(base + ["--reranker", "hf-hub:org/flag"])
    assert _models(cfg) == {**_tiny(cache), "ranker": "local-dir:/from/yaml", "reranker": "hf-hub:org/flag"}


@pytest.mark.parametrize(
    "how",
    ["flag", "flag=value", "dashed flag alias", "yaml preset", "yaml cache_dir", "yaml preset and cache_dir"],
)
def test_tiny_models_are_looked_for_where_the_run_builds_them(tmp_path, how):
    """`run.py` builds the tiny models into `cfg.run.cache_dir` when `cfg.run.preset == "tiny"`; the model
    flags must point there however the preset and the cache dir were given (a YAML key is documented to
    work like the flag of the same name)."""
    cache = str(tmp_path / "cache")
    argv = ["--output_dir", str(tmp_path / "out")]
    yaml_values = {}
    if how == "flag":
        argv += ["--preset", "tiny", "--cache_dir", cache]
    elif how == "flag=value":
        argv += ["--preset=tiny", f"--cache_dir={cache}"]
    elif how == "dashed flag alias":  # HfArgumentParser accepts --cache-dir for --cache_dir
        argv += ["--preset", "tiny", "--cache-dir", cache]
    elif how == "yaml preset":
        yaml_values = {"preset": "tiny"}
        argv += ["--cache_dir", cache]
    elif how == "yaml cache_dir":
        yaml_values = {"cache_dir": cache}
        argv += ["--preset", "tiny"]
    else:
        yaml_values = {"preset": "tiny", "cache_dir": cache}
    if yaml_values:
        argv += ["--config", _yaml(tmp_path / "run.yaml", yaml_values)]

    cfg = parse_config(argv)
    assert (cfg.run.preset, cfg.run.cache_dir) == ("tiny", cache)
    assert _models(cfg) == _tiny(cfg.run.cache_dir)


# --- presets: bundled YAML files or any YAML file, under --config and flags -----------------------------


def test_bundled_presets_are_the_documented_ones():
    assert bundled_presets() == ["laion-coco", "laion-idle-cap", "tiny"]


def test_preset_laion_idle_cap_is_what_laions_own_code_ran(tmp_path):
    """andreaskoepf/laion_idle_cap (docker/c_h2.py, docker/sampling.py): one ranking stage, CLIP ViT-L/14@336px
    over all candidates, every candidate stored; SimpleT5's predict defaults (simplet5 0.1.4) for the repair;
    its sampling and precision need no value: the defaults are the reference's."""
    cfg = parse_config(["--output_dir", str(tmp_path), "--preset", "laion-idle-cap"])
    assert (cfg.rank.ranker, cfg.rerank.reranker, cfg.rank.keep_all_candidates) == ("ViT-L-14-336/openai", "none", True)
    assert (cfg.repair.repair_num_beams, cfg.repair.repair_repetition_penalty, cfg.repair.repair_early_stopping,
            cfg.repair.repair_clean_up_spaces) == (2, 2.5, True, True)
    assert cfg.repair.repair_max_new_tokens == 512 - 1  # predict's max_length=512 counts the decoder's start token
    assert cfg.run.precision == "auto"  # BLIP and T5 fp32, CLIP fp16 on GPUs: the reference's (map_fns.precision)
    assert cfg.caption == CaptionConfig()  # sampling.py's values are the defaults: nothing changed there
    # no Hub checkpoint of the reference's SimpleT5 model: the repairer and its prefix stay the default ones
    assert (cfg.repair.repairer, cfg.repair.repair_prefix) == (RepairConfig().repairer, RepairConfig().repair_prefix)
    assert cfg.rank.keep_top == RankConfig().keep_top and cfg.caption.captioner == CaptionConfig().captioner

    cfg = parse_config(["--output_dir", str(tmp_path), "--preset", "laion-idle-cap", "--keep_all_candidates", "false",
                        "--reranker", "RN50x64/openai"])
    assert (cfg.rank.keep_all_candidates, cfg.rerank.reranker) == (False, "RN50x64/openai")  # flags win


def test_a_preset_given_by_path_sits_under_yaml_and_flags(tmp_path):
    preset = _yaml(tmp_path / "my-recipe.yaml", {"top_k": 7, "top_p": 0.5, "keep_top": 3, "repairer": "none"})
    base = ["--output_dir", str(tmp_path / "out"), "--preset", preset]

    cfg = parse_config(base)
    assert cfg.run.preset == preset
    assert (cfg.caption.top_k, cfg.caption.top_p, cfg.rank.keep_top, cfg.repair.repairer) == (7, 0.5, 3, "none")
    assert cfg.caption.num_candidates == 40 and cfg.rank.ranker == "ViT-L-14/openai"  # the rest: defaults

    config = _yaml(tmp_path / "run.yaml", {"top_k": 11})
    cfg = parse_config(base + ["--config", config, "--top_p", "0.25"])
    assert (cfg.caption.top_k, cfg.caption.top_p, cfg.rank.keep_top) == (11, 0.25, 3)


def test_a_preset_named_in_the_config_yaml_is_used(tmp_path):
    preset = _yaml(tmp_path / "my-recipe.yaml", {"top_k": 7})
    config = _yaml(tmp_path / "run.yaml", {"preset": preset, "output_dir": str(tmp_path / "out")})
    assert parse_config(["--config", config]).caption.top_k == 7


def test_a_preset_is_a_layer_not_a_separate_check(tmp_path):
    """Values that only make sense together may come from different layers: the preset's repo with a flag's
    --private (checked once, on the merged values)."""
    preset = _yaml(tmp_path / "team.yaml", {"push_to_hub": "team/captions"})
    cfg = parse_config(["--output_dir", str(tmp_path / "out"), "--preset", preset, "--private"])
    assert (cfg.publish.push_to_hub, cfg.publish.private) == ("team/captions", True)


def test_cache_dir_in_a_preset_is_the_runs_cache_dir_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = _yaml(tmp_path / "mine.yaml", {"captioner": "{cache_dir}/models/blip", "ranker": "local-dir:{cache_dir}/c",
                                            "caption_prompt": "a photo of "})
    cfg = parse_config(["--output_dir", "out", "--preset", preset, "--cache_dir", "rel/cache"])
    assert cfg.caption.captioner == f"{tmp_path.resolve()}/rel/cache/models/blip"
    assert cfg.rank.ranker == f"local-dir:{tmp_path.resolve()}/rel/cache/c"
    assert cfg.caption.caption_prompt == "a photo of "


def test_preset_tiny_with_a_relative_cache_dir_finds_the_models_where_they_are_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(["--output_dir", "out", "--preset", "tiny", "--cache_dir", "cache"])
    assert _models(cfg) == _tiny("cache")
    assert cfg.caption.captioner.startswith(str(tmp_path.resolve() / "cache"))


def test_build_py_help_lists_the_bundled_presets():
    proc = subprocess.run([sys.executable, "build.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines
    preset_help = help_text[help_text.rindex("--preset PRESET"):help_text.rindex("--config CONFIG")]  # not the usage
    assert "laion-coco | laion-idle-cap | tiny" in preset_help and "YAML file" in preset_help


# --- errors: ConfigError, one line, naming the flag and the bad value -----------------------------------


def _bad_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


def test_one_candidate_per_image_keeps_the_default_shortlist_size(tmp_path):
    """--num_candidates 1 (one long caption per image, ranking only scores it) needs no --keep_top 1."""
    cfg = parse_config(["--output_dir", str(tmp_path), "--num_candidates", "1", "--length_schedule", "1:300"])
    assert (cfg.caption.num_candidates, cfg.caption.max_lengths, cfg.rank.keep_top) == (1, [300], 5)


ERROR_CASES = {
    # id: (argv after --output_dir given a tmp file, what the message must name)
    "negative batch size": (lambda t: ["--batch_size", "-1"], lambda t: ["--batch_size", "-1"]),
    "batch size not an int": (lambda t: ["--batch_size", "abc"], lambda t: ["--batch_size", "abc"]),
    "negative batch size in yaml": (
        lambda t: ["--config", _yaml(t / "neg.yaml", {"batch_size": -2})], lambda t: ["--batch_size", "-2"]),
    "unknown flag": (lambda t: ["--no_such_flag", "1"], lambda t: ["--no_such_flag"]),
    "unknown yaml key": (
        lambda t: ["--config", _yaml(t / "unknown.yaml", {"batch_size": 2, "no_such_key": 1})],
        lambda t: ["no_such_key", str(t / "unknown.yaml")]),
    "invalid yaml": (
        lambda t: ["--config", _bad_yaml(t, "batch_size: [1, 2\ntop_k: 3\n")],
        lambda t: ["--config", str(t / "bad.yaml")]),
    "yaml not a mapping": (
        lambda t: ["--config", _bad_yaml(t, "- batch_size\n- 3\n")], lambda t: ["--config", str(t / "bad.yaml")]),
    "unreadable yaml": (
        lambda t: ["--config", str(t / "missing.yaml")], lambda t: ["--config", str(t / "missing.yaml")]),
    "unknown preset": (lambda t: ["--preset", "huge"], lambda t: ["--preset", "huge", "laion-coco", "tiny"]),
    "missing preset file": (
        lambda t: ["--preset", str(t / "missing.yaml")], lambda t: ["--preset", str(t / "missing.yaml")]),
    "preset is a folder": (lambda t: ["--preset", str(t)], lambda t: ["--preset", str(t)]),
    "invalid preset yaml": (
        lambda t: ["--preset", _bad_yaml(t, "top_k: [1, 2\ntop_p: 3\n")], lambda t: ["--preset", str(t / "bad.yaml")]),
    "preset not a mapping": (
        lambda t: ["--preset", _bad_yaml(t, "- top_k\n- 3\n")], lambda t: ["--preset", str(t / "bad.yaml")]),
    "unknown preset key": (
        lambda t: ["--preset", _yaml(t / "p.yaml", {"top_k": 3, "no_such_key": 1})],
        lambda t: ["no_such_key", "--preset", str(t / "p.yaml")]),
    "preset naming a preset": (
        lambda t: ["--preset", _yaml(t / "p.yaml", {"preset": "tiny"})], lambda t: ["'preset'", str(t / "p.yaml")]),
    "bad value in preset": (
        lambda t: ["--preset", _yaml(t / "p.yaml", {"top_p": 1.5})], lambda t: ["--top_p", "1.5"]),
    "config without a value": (lambda t: ["--config"], lambda t: ["--config"]),
    "bad length schedule": (lambda t: ["--length_schedule", "8-20,16:30"], lambda t: ["--length_schedule", "8-20,16:30"]),
    "zero max samples": (lambda t: ["--max_samples", "0"], lambda t: ["--max_samples", "0"]),
    "ranker without pretrained tag": (lambda t: ["--ranker", "ViT-L-14"], lambda t: ["--ranker", "ViT-L-14"]),
    "ranker bad hf-hub spec": (lambda t: ["--ranker", "hf-hub:no-repo"], lambda t: ["--ranker", "hf-hub:no-repo"]),
    "reranker bad spec": (lambda t: ["--reranker", "RN50"], lambda t: ["--reranker", "RN50"]),
    "unknown precision": (lambda t: ["--precision", "fp8"], lambda t: ["--precision", "fp8", "bf16"]),
    "keep_all_candidates not a bool": (
        lambda t: ["--keep_all_candidates", "maybe"], lambda t: ["--keep_all_candidates", "maybe"]),
    "zero repair repetition penalty": (
        lambda t: ["--repair_repetition_penalty", "0"], lambda t: ["--repair_repetition_penalty", "0"]),
    "negative model batch size": (lambda t: ["--model_batch_size", "-3"], lambda t: ["--model_batch_size", "-3"]),
    "hub repo without namespace": (lambda t: ["--push_to_hub", "laion-coco"], lambda t: ["--push_to_hub", "laion-coco"]),
    "hub repo with two slashes": (lambda t: ["--push_to_hub", "a/b/c"], lambda t: ["--push_to_hub", "a/b/c"]),
    "private without a repo": (lambda t: ["--private"], lambda t: ["--private", "--push_to_hub"]),
    "push_every without a repo": (lambda t: ["--push_every", "3"], lambda t: ["--push_every", "--push_to_hub"]),
    "negative gallery rows": (lambda t: ["--gallery_rows", "-1"], lambda t: ["--gallery_rows", "-1"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_values_fail_with_one_line_naming_flag_and_value(tmp_path, case):
    make_argv, make_expected = ERROR_CASES[case]
    argv = ["--output_dir", str(tmp_path / "out")] + make_argv(tmp_path)
    with pytest.raises(ConfigError) as err:
        parse_config(argv)
    message = str(err.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    for part in make_expected(tmp_path):
        assert part in message, f"{part!r} not named in {message!r}"


def test_missing_output_dir_is_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(["--batch_size", "2"])
    assert "--output_dir" in str(err.value) and "\n" not in str(err.value)


# --- config_text round trip ------------------------------------------------------------------------------


def _round_trip(cfg: BuildConfig, path: Path) -> BuildConfig:
    path.write_text(config_text(cfg))
    again = parse_config(["--config", str(path)])
    # the only field that legitimately differs: the re-run records which YAML it was given
    assert again.run.config == str(path)
    return dataclasses.replace(again, run=dataclasses.replace(again.run, config=cfg.run.config))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--source", "/data/my parquet/*.parquet", "--url_column", "link", "--text_column", "alt text",
         "--max_samples", "123", "--batch_size", "7", "--rows_per_chunk", "50", "--top_p", "0.123456789012345",
         "--top_k", "11", "--num_candidates", "12", "--keep_top", "3", "--length_schedule", "1:5,2:7",
         "--caption_prompt", "a photo: of ", "--seed", "42", "--fetch_timeout", "2.5",
         "--ranker", "hf-hub:org/clip", "--reranker", "none", "--repairer", "none", "--repair_prefix", ""],
        ["--preset", "tiny", "--repairer", "none"],
        ["--preset", "PRESET_FILE", "--top_k", "3"],
        ["--preset", "laion-idle-cap"],
        ["--blocklist", "a list.txt", "--blocklist", "hf://datasets/org/lists/urls.txt", "b.txt", "--filter",
         "punsafe<=0.5", "--filter=similarity>=-0.1", "--max_pwatermark", "0.8", "--max_punsafe_pred", "0.3",
         "--aesthetic_head", "none"],
    ],
    ids=["defaults", "many flags", "preset tiny", "preset file", "preset laion-idle-cap", "safety lists"],
)
def test_saved_config_reproduces_the_run(tmp_path, argv):
    argv = [_yaml(tmp_path / "preset.yaml", {"top_p": 0.5, "seed": 3}) if arg == "PRESET_FILE" else arg for arg in argv]
    cfg = parse_config(["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")] + argv)
    assert _round_trip(cfg, tmp_path / "build_config.yaml") == cfg


@pytest.mark.parametrize("flag,value", [("caption_prompt", "-a"), ("user_agent", "-bot"), ("text_column", "-alt")])
def test_saved_config_reproduces_values_that_look_like_flags(tmp_path, flag, value):
    """Values given as `--flag=value` on the command line can start with a dash; the saved YAML must
    still reproduce them (not drop them, nor read them as another flag)."""
    cfg = parse_config(["--output_dir", str(tmp_path / "out"), f"--{flag}={value}"])
    section = next(name for name, cls in sections().items() if flag in {f.name for f in dataclasses.fields(cls)})
    assert getattr(getattr(cfg, section), flag) == value
    assert _round_trip(cfg, tmp_path / "build_config.yaml") == cfg


def test_blocklists_and_filters_add_up_over_repeated_flags_yaml_and_preset(tmp_path):
    config = _yaml(tmp_path / "run.yaml", {"blocklist": ["from-yaml.txt"], "filter": ["WIDTH>=64"]})
    cfg = parse_config(["--output_dir", str(tmp_path / "out"), "--config", config, "--blocklist", "one.txt",
                        "--blocklist", "two.txt", "--filter", "punsafe<0.5", "--blocklist", "one.txt"])
    assert cfg.fetch.blocklist == ["from-yaml.txt", "one.txt", "two.txt"]
    assert [str(f) for f in cfg.fetch.row_filters()] == ["WIDTH>=64", "punsafe<0.5"]


@pytest.mark.parametrize("argv, message", [
    (["--filter", "punsafe<=x"], "--filter must be COLUMN OP NUMBER"),
    (["--max_punsafe_pred", "0.5", "--punsafe_head", "none"], "--max_punsafe_pred 0.5 needs a --punsafe_head"),
    (["--screen_clip", "ViT-L-14"], "--screen_clip: invalid CLIP spec 'ViT-L-14'"),
])
def test_bad_safety_flags_are_one_line(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_config(["--output_dir", str(tmp_path / "out"), *argv])
    assert "\n" not in str(err.value)


# --- the real entry point, in a fresh interpreter ---------------------------------------------------------


def test_build_py_rejects_a_bad_flag_with_one_line_and_exit_code_2(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "build.py", "--output_dir", str(out), "--batch_size", "-1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "--batch_size" in lines[0] and "-1" in lines[0]
    assert not out.exists()


def test_checking_flags_and_source_never_imports_torch(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import sys\n"
        "from builder.config import parse_config\n"
        "from builder.source import check_source\n"
        f"cfg = parse_config(['--output_dir', {str(tmp_path / 'out')!r}, '--preset', 'tiny',"
        f" '--cache_dir', {str(cache)!r}, '--max_samples', '4'])\n"
        "resolved = check_source(cfg.source)\n"
        "print(len(resolved.parquet_files), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False"]
    assert not cache.exists() and not (tmp_path / "out").exists()
