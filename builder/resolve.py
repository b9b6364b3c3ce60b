"""Check that the run's models and Hub source can be had, before any output is written and any weights download.

A model that cannot be loaded (a typo, a gated or private repo, no network) would otherwise fail once the output
folder exists, after huggingface_hub's 20-30 s of download retries, with a traceback. So every model flag is looked
up first, from metadata only: a local folder's files; else on the Hub one HEAD request per file (no retries) and
the small config file; else, when the Hub does not answer, the local cache the loaders would fall back to. Each
problem is one line naming the flag, the id and what to do. torch and the model libraries load only for what
needs them (open_clip's table of pretrained tags, transformers' list of seq2seq model types), after every model's
files were found.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from builder.config import BuildConfig, ConfigError
from map_fns import captioners, repair, rerank
from map_fns.clip_score import parse_clip_spec
from map_fns.embedding_heads import hub_file
from map_fns.images import one_line

LOGIN = "HF_TOKEN or `hf auth login`"
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # what hf-hub: specs load
OPEN_CLIP_LOCAL_WEIGHTS = ("*.safetensors", "*.bin", "*.pth")  # what open_clip takes from a local-dir: folder
HUB_UNAVAILABLE = (408, 429)  # with 5xx: the answers huggingface_hub retries, i.e. the Hub is not serving


class _Problem(Exception):
    """Why a model or source cannot be used: the rest of the line after the flag and its value."""


def _refusal(err: HfHubHTTPError, repo_id: str, repo_type: str) -> str | None:
    """What to do about the Hub's answer; None when the answer says it is not serving (the cache may)."""
    status = err.response.status_code
    if isinstance(err, GatedRepoError):
        page = f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        return f"is gated: accept the terms of {repo_id} on {page}, then log in ({LOGIN})"
    if isinstance(err, RepositoryNotFoundError):
        return f"cannot be found: the Hub has no repo {repo_id} (check the spelling; a private repo needs a " \
               f"token: {LOGIN})"
    if status in HUB_UNAVAILABLE or status >= 500:
        return None
    if status == 401:
        return f"cannot be checked: the Hub refused the request (401): set a valid token ({LOGIN})"
    return f"cannot be checked: the Hub answered {status} for {repo_id} ({one_line(err.server_message or err)})"


def _unavailable(err: Exception) -> str:
    """Why the Hub did not serve, in a few words."""
    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(err, HfHubHTTPError):
        return f"the Hub cannot be reached (it answered {err.response.status_code})"
    return f"the Hub cannot be reached ({type(err).__name__}: {one_line(err)})"


class Hub:
    """File lookups on the Hub for one check: one request each, no retries, and the local cache alone once the
    Hub has failed to answer (or HF_HUB_OFFLINE is set), so that an unreachable Hub costs one timeout at most."""

    def __init__(self):
        self.off: str | None = None  # why the Hub is not asked any more; HF_HUB_OFFLINE makes the first ask fail

    def has(self, repo_id: str, filename: str, repo_type: str = "model") -> bool | None:
        """Whether the repo holds the file (a HEAD request); None when the Hub does not serve."""
        url = hf_hub_url(repo_id, filename, repo_type=repo_type)
        return self._ask(repo_id, repo_type, lambda: get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT))

    def may_read(self, repo_id: str, repo_type: str) -> bool | None:
        """Whether this token may read the repo's files (the Hub's auth-check, which a gated repo's public files
        would not tell); None when the Hub does not serve."""
        url = f"{constants.ENDPOINT}/api/{repo_type}s/{repo_id}/auth-check"
        return self._ask(repo_id, repo_type, lambda: hf_raise_for_status(
            get_session().get(url, headers=build_hf_headers(), timeout=constants.HF_HUB_ETAG_TIMEOUT)))

    def _ask(self, repo_id: str, repo_type: str, request: Callable[[], object]) -> bool | None:
        """One request, no retries: True if it succeeds, False for a missing file, None when the Hub does not serve
        (from then on it is not asked again). Raises `_Problem` for answers that say what to fix (not found, gated,
        token refused)."""
        if self.off:
            return None
        try:
            request()
            return True
        except RemoteEntryNotFoundError:
            return False
        except (OfflineModeIsEnabled, httpx2.TransportError) as err:
            self.off = _unavailable(err)
        except HfHubHTTPError as err:
            problem = _refusal(err, repo_id, repo_type)
            if problem:
                raise _Problem(problem) from None
            self.off = _unavailable(err)
        return None


class HubFiles:
    """A model's files in a Hub repo, or in the local cache when the Hub is off (as the loaders fall back)."""

    def __init__(self, hub: Hub, repo_id: str):
        self.hub, self.repo_id = hub, repo_id

    def first_of(self, names: tuple[str, ...]) -> str | None:
        """The first of `names` the repo has, None for none; raises `_Problem` if the Hub is off and none is cached."""
        for name in names:
            present = self.hub.has(self.repo_id, name)
            if present is None:
                if isinstance(try_to_load_from_cache(self.repo_id, name), str):
                    return name
            elif present:
                return name
        if self.hub.off:
            raise _Problem(f"needs {self.repo_id} from the Hub, which is not in the local cache, and {self.hub.off}: "
                           "run once online to download it, or pass a local folder")
        return None

    def read_json(self, name: str) -> dict | None:
        """The file's JSON (downloaded into the cache, or from it when the Hub is off); None if the repo lacks it."""
        if self.first_of((name,)) is None:
            return None
        if self.hub.off:
            path = try_to_load_from_cache(self.repo_id, name)
        else:
            path = hf_hub_download(self.repo_id, name, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return _load_json(Path(path), name)


class FolderFiles:
    """A model's files in a local folder: never the network."""

    def __init__(self, folder: Path):
        self.folder = folder

    def first_of(self, names: tuple[str, ...]) -> str | None:
        return next((name for name in names if any(self.folder.glob(name))), None)

    def read_json(self, name: str) -> dict | None:
        path = self.folder / name
        return _load_json(path, name) if path.is_file() else None


def _load_json(path: Path, name: str) -> dict:
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise _Problem(f"has an unreadable {name} ({err})") from None
    return value


def _folder(path: str) -> FolderFiles:
    folder = Path(path)  # as the loaders take it: no ~ expansion
    if not folder.is_dir():
        raise _Problem("is not a folder that exists")
    return FolderFiles(folder)


def _transformers_files(spec: str, hub: Hub) -> FolderFiles | HubFiles:
    """Where `from_pretrained(spec)` reads: an existing folder, else a Hub repo id."""
    if Path(spec).is_dir():
        return FolderFiles(Path(spec))
    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise _Problem("is neither a folder that exists nor a Hub model id (namespace/name)") from None
    return HubFiles(hub, spec)


def _find_transformers(spec: str, hub: Hub) -> dict:
    """The config of a transformers checkpoint that has weights."""
    files = _transformers_files(spec, hub)
    config = files.read_json("config.json")
    if config is None:
        raise _Problem("has no config.json: it is not a saved transformers model")
    if files.first_of(TRANSFORMERS_WEIGHTS) is None:
        raise _Problem("has no weights (model.safetensors or pytorch_model.bin, whole or sharded)")
    return config


def _match_captioner(spec: str, config: dict, hub: Hub) -> None:
    """A checkpoint of a supported family (`map_fns.captioners`); for BLIP, the captioning head (not BLIP's VQA or
    ITM, which share its model_type)."""
    try:
        family = captioners.family_of(config.get("model_type"))
    except ValueError as err:
        raise _Problem(str(err)) from None
    architectures = config.get("architectures") or ["BlipForConditionalGeneration"]
    if family is captioners.BLIP and "BlipForConditionalGeneration" not in architectures:
        raise _Problem(f"is a {architectures[0]} checkpoint, not a BLIP captioner (BlipForConditionalGeneration)")


def _match_seq2seq(spec: str, config: dict, hub: Hub) -> None:
    """The repairer loads with AutoModelForSeq2SeqLM, which takes the model types transformers lists for it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    if config.get("model_type") not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        raise _Problem(f"is a {config.get('model_type', 'untyped')} model, not a seq2seq text model such as T5 "
                       "(AutoModelForSeq2SeqLM)")


def _find_open_clip(spec: str, hub: Hub) -> None:
    """A local-dir: or hf-hub: model: its open_clip config and weights. A built-in name's weights are found only
    through open_clip's table of pretrained tags, in `_match_open_clip`."""
    name, _ = parse_clip_spec(spec)
    if name.startswith("local-dir:"):
        files, weights = _folder(name.removeprefix("local-dir:")), OPEN_CLIP_LOCAL_WEIGHTS
    elif name.startswith("hf-hub:"):
        files, weights = HubFiles(hub, name.removeprefix("hf-hub:")), OPEN_CLIP_WEIGHTS
    else:
        return
    config = files.read_json(OPEN_CLIP_CONFIG)
    if config is None or "model_cfg" not in config:
        raise _Problem(f"is not an open_clip model (no {OPEN_CLIP_CONFIG} with a model_cfg)")
    if files.first_of(weights) is None:
        raise _Problem(f"has no open_clip weights ({' or '.join(weights)})")


def _match_open_clip(spec: str, config: None, hub: Hub) -> None:
    """A built-in architecture with a pretrained tag (or checkpoint file), whose weights open_clip fetches from the
    Hub repo its table names (`hf_hub`: 'org/repo/' or 'org/repo/file'), the .safetensors twin first."""
    name, pretrained = parse_clip_spec(spec)
    if pretrained is None:  # local-dir: or hf-hub:, found in full by _find_open_clip
        return
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    if name not in open_clip.list_models():
        near = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise _Problem(f"names no open_clip model {name!r}" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag:
        if os.path.isfile(pretrained):
            return
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise _Problem(f"has no pretrained tag or checkpoint file {pretrained!r} for {name} (tags: {tags})")
    repo_id, filename = os.path.split(tag["hf_hub"])  # every open_clip 3.3 tag has one, and open_clip prefers it
    filename = filename or HF_WEIGHTS_NAME
    weights = (*_get_safe_alternatives(filename), filename)
    if HubFiles(hub, repo_id).first_of(weights) is None:
        raise _Problem(f"has no weights on the Hub ({repo_id}: {' or '.join(weights)})")


@dataclass(frozen=True)
class ModelFlag:
    """A model of the run: `find` locates its files and reads its config without any model library; `match` then
    checks it against what its loader needs (importing open_clip or transformers' model lists)."""

    flag: str
    value: str
    find: Callable[[str, Hub], dict | None]
    match: Callable[[str, dict | None, Hub], None]

    @contextmanager
    def problems_as_config_error(self) -> Iterator[None]:
        try:
            yield
        except _Problem as problem:
            raise ConfigError(f"--{self.flag} {self.value!r} {problem}") from None


def _find_head(spec: str, hub: Hub) -> None:
    """An embedding head's file: local, or a Hub file ORG/REPO/FILENAME (its layout is checked when it loads)."""
    if Path(spec).expanduser().is_file():
        return
    on_hub = hub_file(spec)
    if on_hub is None:
        raise _Problem("is neither a file that exists nor a Hub file ORG/REPO/FILENAME")
    repo_id, filename = on_hub
    if HubFiles(hub, repo_id).first_of((filename,)) is None:
        raise _Problem(f"is not a file of the Hub repo {repo_id}")


def _nothing_to_match(spec: str, config: None, hub: Hub) -> None:
    """A model whose files `find` checked in full."""


def model_flags(cfg: BuildConfig) -> list[ModelFlag]:
    """Every model the run loads."""
    flags = [ModelFlag("captioner", cfg.caption.captioner, _find_transformers, _match_captioner),
             ModelFlag("ranker", cfg.rank.ranker, _find_open_clip, _match_open_clip)]
    if cfg.screen.heads:
        flags.append(ModelFlag("screen_clip", cfg.screen.screen_clip, _find_open_clip, _match_open_clip))
        flags += [ModelFlag(f"{kind}_head", spec, _find_head, _nothing_to_match)
                  for kind, spec in cfg.screen.heads.values()]
    if cfg.rerank.reranker != rerank.NONE:
        flags.append(ModelFlag("reranker", cfg.rerank.reranker, _find_open_clip, _match_open_clip))
    if cfg.repair.repairer != repair.NONE:
        flags.append(ModelFlag("repairer", cfg.repair.repairer, _find_transformers, _match_seq2seq))
    return flags


def check_models(cfg: BuildConfig) -> None:
    """Raise `ConfigError` (one line) for the first model flag whose model cannot be loaded; download no weights.

    Local folders are read from disk only. Hub ids are looked up with a HEAD request per file (small config files
    are downloaded into the cache); if the Hub does not answer, or HF_HUB_OFFLINE is set, the local cache decides.
    Every model is found before any is matched, so a mistyped id fails before seconds of library imports.
    """
    hub = Hub()
    flags = model_flags(cfg)
    configs = []
    for model in flags:
        with model.problems_as_config_error():
            configs.append(model.find(model.value, hub))
    for model, config in zip(flags, configs):
        with model.problems_as_config_error():
            model.match(model.value, config, hub)


def _streamed(hub_id: str, why: str) -> ConfigError:
    return ConfigError(f"--source {hub_id!r} is a Hub dataset, which the builder streams, and {why}: run when the "
                       "Hub can be reached, or download the dataset and pass its parquet files as --source")


def check_hub_dataset(hub_id: str, split: str) -> None:
    """Raise `ConfigError` (one line) unless the Hub dataset `hub_id` can be streamed now and has `split`.

    Streaming needs the Hub itself: offline, or with the Hub unreachable, no cache can stand in.
    """
    hub = Hub()
    try:
        hub.may_read(hub_id, "dataset")
    except _Problem as problem:
        raise ConfigError(f"--source {hub_id!r} {problem}") from None
    if hub.off:
        raise _streamed(hub_id, hub.off)
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        raise _streamed(hub_id, "HF_DATASETS_OFFLINE is set")
    try:
        builder = datasets.load_dataset_builder(hub_id)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--source {hub_id!r} cannot be read as a dataset: {one_line(err)}") from None
    splits = [str(name) for name in builder.config.data_files or builder.info.splits or []]
    if splits and split not in splits:
        raise ConfigError(f"--source_split {split!r} is not a split of {hub_id} (splits: {', '.join(splits)})")
