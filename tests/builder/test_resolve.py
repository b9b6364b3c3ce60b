"""Models and Hub sources are resolved before any work: a model or source that cannot be had fails at once with one
line naming the flag, the id and what to do. The real huggingface_hub client talks to the loopback Hub
(tests/hub_server.py) in a subprocess, since it reads HF_ENDPOINT and HF_HUB_OFFLINE at import time."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.tiny_models import LOCAL_DIR_PREFIX
from map_fns.embedding_heads import AESTHETIC_HEAD, PUNSAFE_HEAD, hub_file

REPO = Path(__file__).resolve().parents[2]
CHECK_MODELS = """
import sys
from builder.config import ConfigError, parse_config
from builder.resolve import check_models
try:
    check_models(parse_config(["--output_dir", "never-written", *sys.argv[1:]]))
except ConfigError as err:
    sys.exit(f"error: {err}")
"""
CHECK_SOURCE = """
import sys
from builder.config import ConfigError
from builder.resolve import check_hub_dataset
try:
    check_hub_dataset(sys.argv[1], sys.argv[2])
except ConfigError as err:
    sys.exit(f"error: {err}")
"""
DOWNLOAD = "import sys; from huggingface_hub import snapshot_download; [snapshot_download(r) for r in sys.argv[1:]]"
LOGIN = "HF_TOKEN or `hf auth login`"
RN50X64_WEIGHTS_REPO = "timm/resnet50x64_clip.openai"  # where open_clip's table sends RN50x64/openai
VIT_L14_WEIGHTS_REPO = "timm/vit_large_patch14_clip_224.openai"  # and ViT-L-14/openai, the heads' default CLIP


def _python(code: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def _error(proc: subprocess.CompletedProcess) -> str | None:
    """The one line a failed check printed (None if it passed); a traceback fails the test."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 0:
        return None
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1].removeprefix("error: ")


def _check_models(env: dict, *flags: str) -> str | None:
    return _error(_python(CHECK_MODELS, *flags, env=env))


def _check_source(env: dict, hub_id: str, split: str = "train") -> str | None:
    return _error(_python(CHECK_SOURCE, hub_id, split, env=env))


def _offline(env: dict) -> dict:
    return {**env, "HF_HUB_OFFLINE": "1"}


def _tiny_flags(tiny_models) -> list[str]:
    return ["--preset", "tiny", "--cache_dir", str(Path(tiny_models.captioner).parents[1])]


def _local_dir(spec: str) -> Path:
    return Path(spec.removeprefix(LOCAL_DIR_PREFIX))


@pytest.fixture
def hub(hub_server, tiny_models, tmp_path):
    """The loopback Hub holding the tiny models as Hub repos, open_clip weights where RN50x64/openai's and
    ViT-L-14/openai's are, and heads where the default heads are."""
    hub_server.add_repo("org/blip", tiny_models.captioner)
    hub_server.add_repo("org/t5", tiny_models.repairer)
    hub_server.add_repo("org/clip", _local_dir(tiny_models.ranker))
    hub_server.add_repo(RN50X64_WEIGHTS_REPO, _local_dir(tiny_models.reranker))  # not loaded: only looked up
    hub_server.add_repo(VIT_L14_WEIGHTS_REPO, _local_dir(tiny_models.ranker))
    for default, tiny in ((PUNSAFE_HEAD, tiny_models.punsafe_head), (AESTHETIC_HEAD, tiny_models.aesthetic_head)):
        repo_id, filename = hub_file(default)  # the default heads' files, where the defaults name them
        folder = tmp_path / repo_id
        (folder / filename).parent.mkdir(parents=True)
        shutil.copy(tiny, folder / filename)
        hub_server.add_repo(repo_id, folder)
    return hub_server


def _hub_flags() -> list[str]:
    return ["--captioner", "org/blip", "--ranker", "hf-hub:org/clip", "--reranker", "RN50x64/openai",
            "--repairer", "org/t5"]


def _cached_files(hub) -> set[str]:
    return {p.name for p in (hub.home / "hub").rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.timeout(120)
def test_the_tiny_preset_passes_offline_and_online_without_a_request(hub_server, tiny_models):
    assert _check_models(_offline(hub_server.env()), *_tiny_flags(tiny_models)) is None
    assert _check_models(hub_server.env(), *_tiny_flags(tiny_models)) is None
    assert hub_server.requests == 0  # local folders are read from disk, online or not


@pytest.mark.timeout(120)
def test_models_the_hub_has_pass_and_no_weights_are_downloaded(hub):
    assert _check_models(hub.env(), *_hub_flags()) is None
    cached = _cached_files(hub)
    assert {"config.json", "open_clip_config.json"} <= cached  # the configs the checks read
    assert not [name for name in cached if name.endswith((".safetensors", ".bin", ".pth", ".pt"))]


@pytest.mark.timeout(120)
def test_a_mistyped_model_id_is_not_found(hub):
    assert _check_models(hub.env(), *_hub_flags(), "--repairer", "org/t5-grammar") == (
        f"--repairer 'org/t5-grammar' cannot be found: the Hub has no repo org/t5-grammar (check the spelling; "
        f"a private repo needs a token: {LOGIN})")


@pytest.mark.timeout(120)
def test_a_mistyped_head_is_not_found_and_a_switched_off_one_is_not_looked_up(hub):
    repo_id, _ = hub_file(PUNSAFE_HEAD)
    assert _check_models(hub.env(), *_hub_flags(), "--punsafe_head", f"{repo_id}/nsfw.pt") == (
        f"--punsafe_head '{repo_id}/nsfw.pt' is not a file of the Hub repo {repo_id}")
    assert _check_models(hub.env(), *_hub_flags(), "--aesthetic_head", "none", "--punsafe_head", "none",
                         "--screen_clip", "ViT-H-14/laion2b_s32b_b79k") is None  # nothing screens: nothing to find


@pytest.mark.timeout(120)
@pytest.mark.parametrize("token", [True, False], ids=["logged-in", "anonymous"])
def test_a_gated_model_says_to_accept_its_terms(hub, tiny_models, token):
    hub.add_repo("org/gated-blip", tiny_models.captioner, gated=True)
    assert _check_models(hub.env(token=token), "--captioner", "org/gated-blip") == (
        f"--captioner 'org/gated-blip' is gated: accept the terms of org/gated-blip on {hub.url}/org/gated-blip, "
        f"then log in ({LOGIN})")


@pytest.mark.timeout(120)
def test_a_token_the_hub_refuses_is_named_as_the_problem(hub):
    env = {**hub.env(), "HF_TOKEN": "hf_expired"}
    assert _check_models(env, "--captioner", "org/blip") == (
        f"--captioner 'org/blip' cannot be checked: the Hub refused the request (401): set a valid token ({LOGIN})")


@pytest.mark.timeout(120)
def test_an_endpoint_that_is_no_hub_gets_its_answer_quoted(hub):
    env = {**hub.env(), "HF_ENDPOINT": hub.url + "/mirror"}  # a mistyped HF_ENDPOINT: every path is unknown there
    assert _check_models(env, "--captioner", "org/blip") == (
        "--captioner 'org/blip' cannot be checked: the Hub answered 404 for org/blip (no route for HEAD "
        "/mirror/org/blip/resolve/main/config.json)")


@pytest.mark.timeout(120)
def test_offline_a_model_not_in_the_cache_fails_without_a_request(hub):
    assert _check_models(_offline(hub.env()), *_hub_flags()) == (
        "--captioner 'org/blip' needs org/blip from the Hub, which is not in the local cache, and HF_HUB_OFFLINE is "
        "set: run once online to download it, or pass a local folder")
    assert hub.requests == 0


@pytest.mark.timeout(120)
def test_offline_or_with_the_hub_down_models_in_the_cache_pass(hub):
    heads = [hub_file(head)[0] for head in (PUNSAFE_HEAD, AESTHETIC_HEAD)]
    repos = ("org/blip", "org/clip", RN50X64_WEIGHTS_REPO, VIT_L14_WEIGHTS_REPO, "org/t5", *heads)
    assert _python(DOWNLOAD, *repos, env=hub.env()).returncode == 0
    assert _check_models(_offline(hub.env()), *_hub_flags()) is None
    requests = hub.requests
    hub.down = True
    assert _check_models(hub.env(), *_hub_flags()) is None  # the loaders fall back to the cache the same way
    assert hub.requests == requests + 1  # once the Hub failed to answer, only the cache is asked


@pytest.mark.timeout(120)
def test_with_the_hub_down_the_check_asks_once_and_does_not_retry(hub):
    hub.down = True
    assert _check_models(hub.env(), *_hub_flags()) == (
        "--captioner 'org/blip' needs org/blip from the Hub, which is not in the local cache, and the Hub cannot be "
        "reached (it answered 503): run once online to download it, or pass a local folder")
    assert hub.requests == 1  # no retries, and the three other models are not asked for


@pytest.mark.timeout(120)
def test_with_no_hub_listening_the_check_fails_at_once(hub_server, closed_port_url):
    env = {**hub_server.env(), "HF_ENDPOINT": closed_port_url.rsplit("/", 1)[0]}
    error = _check_models(env, "--captioner", "org/blip")
    assert error.startswith("--captioner 'org/blip' needs org/blip from the Hub, which is not in the local cache, "
                            "and the Hub cannot be reached (ConnectError: "), error
    assert error.endswith("run once online to download it, or pass a local folder")


@pytest.mark.timeout(120)
def test_a_model_of_the_wrong_architecture_is_named(hub, tiny_models):
    error = _check_models(hub.env(), *_tiny_flags(tiny_models), "--captioner", tiny_models.repairer)
    assert error.startswith(f"--captioner {tiny_models.repairer!r} is a t5 model, which is not a supported captioner "
                            "family (supported: BLIP (blip), BLIP-2 (blip-2), "), error
    assert all(family in error for family in ("GIT (git)", "Florence-2 (florence2)", "Qwen2-VL (qwen2_vl/qwen2_5_vl)"))
    assert _check_models(hub.env(), *_tiny_flags(tiny_models), "--repairer", "org/blip") == (
        "--repairer 'org/blip' is a blip model, not a seq2seq text model such as T5 (AutoModelForSeq2SeqLM)")
    assert _check_models(hub.env(), *_tiny_flags(tiny_models), "--ranker", "hf-hub:org/t5") == (
        "--ranker 'hf-hub:org/t5' is not an open_clip model (no open_clip_config.json with a model_cfg)")


@pytest.mark.timeout(120)
def test_a_blip_checkpoint_without_the_captioning_head_is_refused(tiny_models, tmp_path):
    vqa = shutil.copytree(tiny_models.captioner, tmp_path / "blip-vqa")
    config = (vqa / "config.json").read_text()
    (vqa / "config.json").write_text(config.replace('"BlipForConditionalGeneration"', '"BlipForQuestionAnswering"'))
    assert _check_models(_offline(dict(os.environ)), *_tiny_flags(tiny_models), "--captioner", str(vqa)) == (
        f"--captioner {str(vqa)!r} is a BlipForQuestionAnswering checkpoint, not a BLIP captioner "
        "(BlipForConditionalGeneration)")


@pytest.mark.timeout(120)
def test_a_missing_or_incomplete_local_folder_is_named(tiny_models, tmp_path):
    env = _offline(dict(os.environ))
    missing = str(tmp_path / "no-such-model")
    assert _check_models(env, "--captioner", missing) == (
        f"--captioner {missing!r} is neither a folder that exists nor a Hub model id (namespace/name)")
    assert _check_models(env, *_tiny_flags(tiny_models), "--ranker", LOCAL_DIR_PREFIX + missing) == (
        f"--ranker {LOCAL_DIR_PREFIX + missing!r} is not a folder that exists")

    no_config = shutil.copytree(tiny_models.repairer, tmp_path / "t5", ignore=shutil.ignore_patterns("config.json"))
    assert _check_models(env, *_tiny_flags(tiny_models), "--repairer", str(no_config)) == (
        f"--repairer {str(no_config)!r} has no config.json: it is not a saved transformers model")
    corrupt = shutil.copytree(tiny_models.repairer, tmp_path / "t5-corrupt")
    (corrupt / "config.json").write_text('{"model_type": "t5",')  # cut off mid-write
    assert _check_models(env, *_tiny_flags(tiny_models), "--repairer", str(corrupt)).startswith(
        f"--repairer {str(corrupt)!r} has an unreadable config.json (")
    no_weights = shutil.copytree(tiny_models.captioner, tmp_path / "blip", ignore=shutil.ignore_patterns("model.*"))
    assert _check_models(env, *_tiny_flags(tiny_models), "--captioner", str(no_weights)) == (
        f"--captioner {str(no_weights)!r} has no weights (model.safetensors or pytorch_model.bin, whole or sharded)")
    no_clip_weights = shutil.copytree(_local_dir(tiny_models.reranker), tmp_path / "clip",
                                      ignore=shutil.ignore_patterns("*.safetensors"))
    assert _check_models(env, *_tiny_flags(tiny_models), "--reranker", LOCAL_DIR_PREFIX + str(no_clip_weights)) == (
        f"--reranker {LOCAL_DIR_PREFIX + str(no_clip_weights)!r} has no open_clip weights "
        "(*.safetensors or *.bin or *.pth)")


@pytest.mark.timeout(120)
def test_an_unknown_open_clip_model_or_tag_is_named_without_a_request(hub_server, tiny_models):
    unknown = _check_models(hub_server.env(), *_tiny_flags(tiny_models), "--ranker", "ViT-L-41/openai")
    assert unknown.startswith("--ranker 'ViT-L-41/openai' names no open_clip model 'ViT-L-41' (did you mean ")
    assert "ViT-L-14" in unknown.rpartition("did you mean ")[2], unknown
    assert _check_models(hub_server.env(), *_tiny_flags(tiny_models), "--reranker", "RN50x64/openia") == (
        "--reranker 'RN50x64/openia' has no pretrained tag or checkpoint file 'openia' for RN50x64 (tags: openai)")
    assert hub_server.requests == 0


@pytest.mark.timeout(120)
def test_a_builtin_tag_is_looked_up_where_open_clip_downloads_its_weights(hub, tiny_models):
    assert _check_models(hub.env(), *_tiny_flags(tiny_models), "--ranker", "ViT-B-32/openai") == (
        "--ranker 'ViT-B-32/openai' cannot be found: the Hub has no repo timm/vit_base_patch32_clip_224.openai "
        f"(check the spelling; a private repo needs a token: {LOGIN})")
    hub.add_repo("timm/vit_base_patch32_clip_224.openai", tiny_models.repairer)  # a repo without open_clip weights
    assert _check_models(hub.env(), *_tiny_flags(tiny_models), "--ranker", "ViT-B-32/openai") == (
        "--ranker 'ViT-B-32/openai' has no weights on the Hub (timm/vit_base_patch32_clip_224.openai: "
        "open_clip_model.safetensors or open_clip_pytorch_model.bin)")


@pytest.mark.timeout(120)
def test_a_hub_source_that_exists_with_its_split_passes(hub_server):
    hub_server.add_repo("org/photos", REPO / "builder" / "sample", repo_type="datasets")
    assert _check_source(hub_server.env(), "org/photos") is None
    assert _check_source(hub_server.env(), "org/photos", "validation") == (
        "--source_split 'validation' is not a split of org/photos (splits: train)")


@pytest.mark.timeout(120)
def test_a_hub_source_not_found_gated_offline_or_unreachable_is_named(hub_server):
    assert _check_source(hub_server.env(), "org/phots") == (
        f"--source 'org/phots' cannot be found: the Hub has no repo org/phots (check the spelling; a private repo "
        f"needs a token: {LOGIN})")
    hub_server.add_repo("org/photos", REPO / "builder" / "sample", repo_type="datasets")
    hub_server.add_repo("org/gated-photos", REPO / "builder" / "sample", repo_type="datasets", gated=True)
    assert _check_source(hub_server.env(), "org/gated-photos") == (
        f"--source 'org/gated-photos' is gated: accept the terms of org/gated-photos on "
        f"{hub_server.url}/datasets/org/gated-photos, then log in ({LOGIN})")
    streams = ("is a Hub dataset, which the builder streams, and {}: run when the Hub can be reached, or download "
               "the dataset and pass its parquet files as --source")
    assert _check_source(_offline(hub_server.env()), "org/photos") == (
        "--source 'org/photos' " + streams.format("HF_HUB_OFFLINE is set"))
    assert _check_source({**hub_server.env(), "HF_DATASETS_OFFLINE": "1"}, "org/photos") == (
        "--source 'org/photos' " + streams.format("HF_DATASETS_OFFLINE is set"))
    requests = hub_server.requests
    hub_server.down = True
    assert _check_source(hub_server.env(), "org/photos") == (
        "--source 'org/photos' " + streams.format("the Hub cannot be reached (it answered 503)"))
    assert hub_server.requests == requests + 1
