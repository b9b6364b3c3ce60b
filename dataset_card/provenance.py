"""Which models made the captions, and at which Hub revision, read from the local Hugging Face cache.

A Hub model is downloaded into `models--ORG--NAME/snapshots/<commit sha>/`, so the cached file's path names
the exact revision the run loaded. Local folders, and models not in the cache, say "not recorded".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from map_fns.flags import NONE
from map_fns.registry import STAGES

NOT_RECORDED = "not recorded"
# A file every checkpoint of that kind has: transformers models, and open_clip models on the Hub.
MARKER_FILES = ("config.json", "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ModelUsed:
    role: str
    spec: str  # as configured: Hub id, local path, or open_clip spec
    hub_id: str | None  # the Hub repo the weights come from, when they come from one
    revision: str


def cached_revision(repo_id: str) -> str:
    """The commit sha of `repo_id`'s snapshot in the local cache, or NOT_RECORDED."""
    for filename in MARKER_FILES:
        try:
            path = try_to_load_from_cache(repo_id, filename)
        except HFValidationError:  # a path that no longer exists, not a repo id
            return NOT_RECORDED
        if isinstance(path, str):
            return Path(path).parent.name  # .../snapshots/<sha>/<filename>
    return NOT_RECORDED


def hub_repo(spec: str, clip: bool) -> str | None:
    """The Hub repo behind a configured model, or None for local files (and for a disabled stage)."""
    if spec == NONE or Path(spec).expanduser().exists() or spec.startswith("local-dir:"):
        return None
    if not clip:
        return spec
    if spec.startswith("hf-hub:"):
        return spec.removeprefix("hf-hub:")
    import open_clip  # an open_clip tag, e.g. ViT-L-14/openai, names its Hub mirror in open_clip's registry

    name, _, tag = spec.partition("/")
    return (open_clip.get_pretrained_cfg(name, tag).get("hf_hub") or "").strip("/") or None


def models_used(config: dict) -> list[ModelUsed]:
    """The model of every registered stage that has one (captioner, both rankers, repairer), with its revision."""
    used = []
    for stage in STAGES:
        if stage.model:
            spec = config[stage.name][stage.model]
            repo = hub_repo(spec, clip=stage.model_kind == "open_clip")
            used.append(ModelUsed(stage.role, spec, repo, cached_revision(repo) if repo else NOT_RECORDED))
    return used
