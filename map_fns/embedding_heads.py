"""Small published heads on CLIP ViT-L/14 (openai) image embeddings: LAION's NSFW detector (`punsafe_pred`)
and aesthetic predictor (`aesthetic`).

LAION scored LAION-5B with these heads on the L2-normalised ViT-L/14 image embedding, the one the first ranker
computes, so one encode serves the ranker and both heads. A head is a published state dict, from a local file
or a Hub file `ORG/REPO/FILENAME`. Which computation it needs is recognised from its keys and its widths read
from its shapes; any other file is refused with one line naming it. The layouts, as published:

- punsafe, LAION-AI/CLIP-based-NSFW-Detector: an autokeras model on ViT-L/14 embeddings (Keras Normalization
  with per-feature mean and variance, Dense 64, ReLU, Dense 512, ReLU, Dense 256, ReLU, Dense 1, sigmoid;
  1 = NSFW). Its torch ports keep the names of that repo's conversion script (`convert_heads_to_pytorch.py`):
  `norm.mean`, `norm.variance`, `linear_1` to `linear_4`. On the Hub: `birder-project/nsfw-predictor` (the
  birder code reports 1 - p; the file holds the detector itself). The original is a Keras SavedModel
  (`clip_autokeras_binary_nsfw.zip`); to use another copy of it, put its Normalization weights and its Dense
  kernels (transposed) and biases under those names, as that script does, and `torch.save` the dict.
- aesthetic, christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth`: an
  `nn.Sequential` of Linear 1024, Dropout, Linear 128, Dropout, Linear 64, Dropout, Linear 16, Linear 1 with no
  activation (its `simple_inference.py` comments the ReLUs out), keys `layers.{0,2,4,6,7}`. On the Hub as
  TRL's DDPO reward model, `trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth`. The older
  LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth` (one Linear: `weight`, `bias`) loads too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from map_fns.flags import ConfigError
from map_fns.images import one_line

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PUNSAFE_HEAD = "birder-project/nsfw-predictor/openai-clip_nsfw-predictor.pt"
AESTHETIC_HEAD = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
HEAD_KINDS = ("punsafe", "aesthetic")
KERAS_EPSILON = 1e-7  # Keras' Normalization divides by max(sqrt(variance), epsilon)
_SHOWN_KEYS = 6  # keys quoted in an error about a file's layout


def state_key(prefix: str, name: str) -> str:
    """A layer's tensor's name in a state dict ('linear_1.weight'; 'weight' for a bare layer)."""
    return f"{prefix}.{name}" if prefix else name


@dataclass(frozen=True)
class Layout:
    """One published head's computation, told apart from the others by its state-dict keys."""

    name: str
    linears: tuple[str, ...]  # the Linear layers' key prefixes in order ("" for a bare nn.Linear)
    relu: bool = False  # a ReLU after every Linear but the last
    standardize: str | None = None  # key prefix of a Keras Normalization (mean, variance) before the first Linear
    sigmoid: bool = False  # the output is a probability

    def keys(self) -> set[str]:
        names = {state_key(prefix, name) for prefix in self.linears for name in ("weight", "bias")}
        if self.standardize:
            names |= {state_key(self.standardize, "mean"), state_key(self.standardize, "variance")}
        return names


NSFW_DETECTOR = Layout("LAION CLIP-based NSFW detector", ("linear_1", "linear_2", "linear_3", "linear_4"),
                       relu=True, standardize="norm", sigmoid=True)
IMPROVED_AESTHETIC = Layout("improved aesthetic predictor", tuple(f"layers.{i}" for i in (0, 2, 4, 6, 7)))
AESTHETIC_V1 = Layout("LAION aesthetic predictor v1 (linear)", ("",))
LAYOUTS = {"punsafe": (NSFW_DETECTOR,), "aesthetic": (IMPROVED_AESTHETIC, AESTHETIC_V1)}  # the default's first


class EmbeddingHead:
    """A loaded head on one device, in fp32: embeddings in, one float per row out (a probability for punsafe,
    a score of about 1 to 10 for aesthetic). It L2-normalises the embeddings itself, as LAION did."""

    def __init__(self, layout: Layout, state: Mapping[str, torch.Tensor], device):
        import torch

        self.layout = layout
        self.device = torch.device(device)
        self._state = {key: tensor.to(self.device, torch.float32) for key, tensor in state.items()}
        self.input_dim = int(self._state[state_key(layout.linears[0], "weight")].shape[1])

    def __call__(self, embeddings: torch.Tensor) -> list[float]:
        import torch
        import torch.nn.functional as F

        if embeddings.ndim != 2 or embeddings.shape[1] != self.input_dim:
            raise ValueError(f"the {self.layout.name} takes embeddings of shape [N, {self.input_dim}], "
                             f"got {list(embeddings.shape)}")
        layout, state = self.layout, self._state
        with torch.inference_mode():
            x = F.normalize(embeddings.to(self.device, torch.float32), dim=-1)
            if layout.standardize:
                std = state[state_key(layout.standardize, "variance")].sqrt().clamp_min(KERAS_EPSILON)
                x = (x - state[state_key(layout.standardize, "mean")]) / std
            for i, prefix in enumerate(layout.linears):
                x = F.linear(x, state[state_key(prefix, "weight")], state[state_key(prefix, "bias")])
                if layout.relu and i < len(layout.linears) - 1:
                    x = F.relu(x)
            if layout.sigmoid:
                x = torch.sigmoid(x)
        return x[:, 0].tolist()


def load_head(spec: str, kind: str, device) -> EmbeddingHead:
    """The `kind` head ('punsafe' or 'aesthetic') in `spec`: a local file, or a Hub file ORG/REPO/FILENAME
    (downloaded once into the Hugging Face cache; HF_ENDPOINT and offline mode apply).

    Weights load safely (safetensors, or torch.load with weights_only). A missing file, a file that is not
    weights, or a state dict of no `kind` layout raises `ConfigError` (a ValueError) in one line naming `spec`.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}: expected one of {', '.join(HEAD_KINDS)}")

    def fail(reason: str) -> NoReturn:
        raise ConfigError(f"--{kind}_head {spec!r}: {reason}")

    state = _read_weights(_head_file(spec, fail), fail)
    layout = _recognise(state, kind, fail)
    _check_shapes(state, layout, fail)
    head = EmbeddingHead(layout, state, device)
    logger.info("loaded %s head %s: %s on %d-wide embeddings, on %s", kind, spec, layout.name, head.input_dim,
                head.device)
    return head


def hub_file(spec: str) -> tuple[str, str] | None:
    """(repo id, file name) of a spec that names a Hub file ORG/REPO/FILENAME, None for one that cannot (a path
    that is absolute, relative to `.` or `~`, or of fewer parts)."""
    parts = spec.split("/")
    if Path(spec).is_absolute() or spec.startswith((".", "~")) or len(parts) < 3 or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def _head_file(spec: str, fail) -> str:
    """A local path for `spec`: the file itself, or the Hub file downloaded into the cache."""
    if not isinstance(spec, str) or not spec.strip():
        fail("expected a local file or a Hub file ORG/REPO/FILENAME")
    local = Path(spec).expanduser()
    if local.is_file():
        return str(local)
    on_hub = hub_file(spec)
    if on_hub is None:
        fail("no such file (expected a local file or a Hub file ORG/REPO/FILENAME)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id, filename = on_hub
    try:
        return hf_hub_download(repo_id, filename)
    except GatedRepoError:
        fail(f"{repo_id} is gated on the Hub: accept its terms there, then log in (HF_TOKEN or `hf auth login`)")
    except RepositoryNotFoundError:
        fail(f"no such local file, and the Hub has no repo {repo_id} (a private one needs a token)")
    except RemoteEntryNotFoundError:
        fail(f"no such local file, and the Hub repo {repo_id} has no file {filename}")
    except LocalEntryNotFoundError:
        fail("no such local file, nor in the Hugging Face cache, and the Hub cannot be reached (offline?)")
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as err:
        fail(f"not a local file, and the Hub file cannot be had ({type(err).__name__}: {one_line(err)})")


def _read_weights(path: str, fail) -> Mapping:
    """The tensors saved in `path`, never running code from it."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, SafetensorError) as err:
        fail(f"cannot be read as weights ({type(err).__name__}): expected a .safetensors file or a state dict "
             "saved with torch.save")


def _shown(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:_SHOWN_KEYS]) + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def _recognise(state, kind: str, fail) -> Layout:
    """The `kind` layout whose keys are exactly the file's."""
    import torch

    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        fail(f"holds a {type(state).__name__}, not a state dict of tensors")
    keys = set(state)
    for layout in LAYOUTS[kind]:
        if keys == layout.keys():
            return layout
    for other_kind, layouts in LAYOUTS.items():
        for layout in layouts:
            if keys == layout.keys():
                fail(f"holds the {layout.name}, which belongs in --{other_kind}_head")
    closest = max(LAYOUTS[kind], key=lambda layout: len(keys & layout.keys()))
    missing, extra = closest.keys() - keys, keys - closest.keys()
    differences = [f"lacks {_shown(missing)}"] if missing else []
    differences += [f"has {_shown(extra)} in addition"] if extra else []
    fail(f"is no {kind} head: next to the {closest.name}, it {' and '.join(differences)}")


def _check_shapes(state, layout: Layout, fail) -> None:
    """Each Linear takes what the one before gives, the last gives one number, the statistics match the input."""
    width = None
    for prefix in layout.linears:
        weight_key, bias_key = state_key(prefix, "weight"), state_key(prefix, "bias")
        weight, bias = state[weight_key], state[bias_key]
        if weight.ndim != 2 or tuple(bias.shape) != weight.shape[:1] or width not in (None, weight.shape[1]):
            after = f" taking the {width} features before it" if width else ""
            fail(f"{weight_key} {list(weight.shape)} with {bias_key} {list(bias.shape)} is not a Linear layer{after}")
        width = weight.shape[0]
    if width != 1:
        fail(f"its last layer gives {width} numbers, not 1")
    if layout.standardize:
        input_dim = state[state_key(layout.linears[0], "weight")].shape[1]
        for name in ("mean", "variance"):
            stat = state[state_key(layout.standardize, name)]
            if tuple(stat.shape) != (input_dim,):
                fail(f"{state_key(layout.standardize, name)} has shape {list(stat.shape)}, not [{input_dim}]")
