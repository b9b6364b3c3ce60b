"""The NSFW and aesthetic heads: tiny heads of the published layouts, loaded from a local file or the loopback
Hub through `load_head`, compute what the published models compute (re-done here with plain tensor algebra from
the saved state dict), and every file they cannot use is refused in one line naming it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from builder.tiny_heads import build_tiny_head
from map_fns.embedding_heads import PUNSAFE_HEAD, load_head

REPO = Path(__file__).resolve().parents[2]
INPUT_DIM = 24
# The published state-dict keys, read from the files' loaders (see map_fns/embedding_heads.py for the sources).
NSFW_KEYS = {"norm.mean", "norm.variance"} | {f"linear_{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")}
IMPROVED_AESTHETIC_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
HUB_ROUND_TRIP = """
import json, sys
from huggingface_hub import HfApi
from map_fns.embedding_heads import load_head
local_file, embeddings_file, *refused = sys.argv[1:]
if local_file:
    import torch
    api = HfApi()
    api.create_repo("org/heads")
    api.upload_file(path_or_fileobj=local_file, path_in_repo="nsfw/tiny.pth", repo_id="org/heads")
    print(json.dumps(load_head("org/heads/nsfw/tiny.pth", "punsafe", "cpu")(torch.load(embeddings_file))))
for spec in refused:
    try:
        load_head(spec, "punsafe", "cpu")
    except ValueError as err:
        print(json.dumps(str(err)))
"""


def _embeddings(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Embeddings as an image tower returns them: not unit length, not centred."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, INPUT_DIM, generator=generator) * 6 + torch.randn(INPUT_DIM, generator=generator)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x * x).sum(dim=1, keepdim=True).sqrt()


def _exactly(state: dict) -> dict:
    """The saved tensors in float64, so that the references below carry no rounding of their own."""
    return {key: value.double() for key, value in state.items()}


def _assert_matches(scores: list[float], expected: torch.Tensor) -> None:
    torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64), expected, rtol=1e-6, atol=1e-6)


def _nsfw_by_hand(state: dict, embeddings: torch.Tensor) -> torch.Tensor:
    """LAION's autokeras detector: Keras Normalization, three Dense+ReLU, Dense, sigmoid."""
    state, embeddings = _exactly(state), embeddings.double()
    x = (_unit(embeddings) - state["norm.mean"]) / state["norm.variance"].sqrt()
    x = torch.clamp(x @ state["linear_1.weight"].T + state["linear_1.bias"], min=0)
    x = torch.clamp(x @ state["linear_2.weight"].T + state["linear_2.bias"], min=0)
    x = torch.clamp(x @ state["linear_3.weight"].T + state["linear_3.bias"], min=0)
    return 1 / (1 + torch.exp(-(x @ state["linear_4.weight"].T + state["linear_4.bias"])))[:, 0]


def _improved_aesthetic_by_hand(state: dict, embeddings: torch.Tensor) -> torch.Tensor:
    """The improved aesthetic predictor at inference: five Linear layers, no activation (dropout is off)."""
    state, embeddings = _exactly(state), embeddings.double()
    x = _unit(embeddings)
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0]


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("heads")
    return {kind: build_tiny_head(kind, INPUT_DIM, folder) for kind in ("punsafe", "aesthetic")}


def _assert_one_line_naming(err: pytest.ExceptionInfo, spec: str, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message and repr(spec) in message, message
    for word in words:
        assert word in message, message


def test_tiny_heads_have_the_published_keys_and_are_the_same_every_build(heads, tmp_path):
    for kind, keys in (("punsafe", NSFW_KEYS), ("aesthetic", IMPROVED_AESTHETIC_KEYS)):
        state = torch.load(heads[kind], weights_only=True)
        assert set(state) == keys
        again = torch.load(build_tiny_head(kind, INPUT_DIM, tmp_path), weights_only=True)
        assert all(torch.equal(state[key], again[key]) for key in keys)


def test_punsafe_head_computes_the_nsfw_detector(heads):
    head = load_head(heads["punsafe"], "punsafe", "cpu")
    assert head.input_dim == INPUT_DIM
    embeddings = _embeddings()
    scores = head(embeddings)
    _assert_matches(scores, _nsfw_by_hand(torch.load(heads["punsafe"], weights_only=True), embeddings))
    scores = torch.tensor(scores)
    assert ((scores > 0) & (scores < 1)).all()
    assert (scores < 0.4).any() and (scores > 0.6).any()  # a threshold can put rows on both sides


def test_aesthetic_head_computes_the_improved_aesthetic_predictor(heads):
    head = load_head(heads["aesthetic"], "aesthetic", "cpu")
    assert head.input_dim == INPUT_DIM
    embeddings = _embeddings()
    scores = head(embeddings)
    _assert_matches(scores, _improved_aesthetic_by_hand(torch.load(heads["aesthetic"], weights_only=True), embeddings))
    assert max(scores) - min(scores) > 3


def test_the_older_linear_aesthetic_predictor_loads_as_an_aesthetic_head(tmp_path):
    generator = torch.Generator().manual_seed(2)
    state = {"weight": torch.randn(1, INPUT_DIM, generator=generator) * 5, "bias": torch.tensor([3.5])}
    torch.save(state, tmp_path / "sa_0_4_linear.pth")  # nn.Linear(768, 1).state_dict(), as LAION published it
    embeddings = _embeddings()
    scores = load_head(str(tmp_path / "sa_0_4_linear.pth"), "aesthetic", "cpu")(embeddings)
    exact = _exactly(state)
    _assert_matches(scores, (_unit(embeddings.double()) @ exact["weight"].T + exact["bias"])[:, 0])


def test_heads_normalise_embeddings_themselves_and_compute_in_fp32(heads):
    embeddings = _embeddings()
    for kind, spec in heads.items():
        head = load_head(spec, kind, "cpu")
        assert head(embeddings * 40) == pytest.approx(head(embeddings), abs=1e-6)
        half = embeddings.to(torch.bfloat16)
        assert head(half) == head(half.float())
        assert head(torch.empty(0, INPUT_DIM)) == []


def test_a_safetensors_file_loads_like_the_torch_file(heads, tmp_path):
    save_file(torch.load(heads["punsafe"], weights_only=True), tmp_path / "nsfw.safetensors")
    embeddings = _embeddings()
    assert load_head(str(tmp_path / "nsfw.safetensors"), "punsafe", "cpu")(embeddings) == \
        load_head(heads["punsafe"], "punsafe", "cpu")(embeddings)


def _hub_client(hub_server, *args: str, offline: bool = False) -> list:
    """What HUB_ROUND_TRIP printed, one JSON value a line, run against the loopback Hub."""
    env = {**hub_server.env(), **({"HF_HUB_OFFLINE": "1"} if offline else {})}
    proc = subprocess.run([sys.executable, "-c", HUB_ROUND_TRIP, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_hub_file_loads_through_the_hub_client(heads, hub_server, tmp_path):
    embeddings = _embeddings(8)
    torch.save(embeddings, tmp_path / "embeddings.pt")
    hub_server.add_repo("org/gated", Path(heads["punsafe"]).parent, gated=True)
    refused = {"org/heads/nsfw/other.pth": "Hub repo org/heads has no file nsfw/other.pth",
               "org/no-such-repo/tiny.pth": "Hub has no repo org/no-such-repo",
               "org/gated/tiny-punsafe-head.pth": "org/gated is gated on the Hub: accept its terms"}
    scores, *errors = _hub_client(hub_server, heads["punsafe"], str(tmp_path / "embeddings.pt"), *refused)
    assert scores == load_head(heads["punsafe"], "punsafe", "cpu")(embeddings)
    for (spec, reason), message in zip(refused.items(), errors, strict=True):
        assert "\n" not in message and repr(spec) in message and reason in message, message


def test_the_default_head_offline_and_not_cached_is_refused_in_one_line(hub_server):
    [message] = _hub_client(hub_server, "", "", PUNSAFE_HEAD, offline=True)
    assert "\n" not in message and repr(PUNSAFE_HEAD) in message and "the Hub cannot be reached" in message


def _saved(tmp_path: Path, state) -> str:
    torch.save(state, tmp_path / "head.pth")
    return str(tmp_path / "head.pth")


def _written(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "head.pth").write_bytes(data)
    return str(tmp_path / "head.pth")


def _nsfw_state(heads, **changes) -> dict:
    """The tiny NSFW head's tensors with `changes` made (a None removes the key)."""
    state = torch.load(heads["punsafe"], weights_only=True)
    state.update(changes)
    return {key: value for key, value in state.items() if value is not None}


@pytest.mark.parametrize("make_spec, words", [
    pytest.param(lambda heads, tmp: str(tmp / "nope.pth"), ("no such file",), id="missing file"),
    pytest.param(lambda heads, tmp: "heads/nope.pth", ("no such file", "ORG/REPO/FILENAME"), id="two-part name"),
    pytest.param(lambda heads, tmp: _written(tmp, b"<html>404</html>"), ("cannot be read as weights",),
                 id="not weights"),
    pytest.param(lambda heads, tmp: _saved(tmp, torch.nn.Linear(INPUT_DIM, 1)), ("cannot be read as weights",),
                 id="pickled module"),  # weights_only: no code from the file runs
    pytest.param(lambda heads, tmp: _saved(tmp, [torch.ones(3)]), ("holds a list",), id="a list"),
    pytest.param(lambda heads, tmp: heads["aesthetic"], ("improved aesthetic predictor", "--aesthetic_head"),
                 id="aesthetic file"),
    pytest.param(lambda heads, tmp: _saved(tmp, _nsfw_state(heads, **{"linear_4.weight": None,
                                                                      "linear_4.bias": None})),
                 ("is no punsafe head", "lacks linear_4.bias, linear_4.weight"), id="a layer missing"),
    pytest.param(lambda heads, tmp: _saved(tmp, _nsfw_state(heads, **{"linear_5.weight": torch.ones(1, 1)})),
                 ("is no punsafe head", "has linear_5.weight in addition"), id="an extra key"),
    pytest.param(lambda heads, tmp: _saved(tmp, _nsfw_state(heads, **{"linear_2.weight": torch.ones(16, 12)})),
                 ("linear_2.weight [16, 12]", "taking the 16 features"), id="layers that do not chain"),
    pytest.param(lambda heads, tmp: _saved(tmp, _nsfw_state(heads, **{"linear_4.weight": torch.ones(2, 16),
                                                                      "linear_4.bias": torch.ones(2)})),
                 ("gives 2 numbers",), id="two outputs"),
    pytest.param(lambda heads, tmp: _saved(tmp, _nsfw_state(heads, **{"norm.variance": torch.ones(INPUT_DIM - 1)})),
                 ("norm.variance has shape [23], not [24]",), id="statistics of another width"),
])
def test_an_unusable_punsafe_head_is_refused_in_one_line(heads, tmp_path, make_spec, words):
    spec = make_spec(heads, tmp_path)
    with pytest.raises(ValueError) as err:
        load_head(spec, "punsafe", "cpu")
    _assert_one_line_naming(err, spec, *words)


def test_a_punsafe_file_is_refused_as_an_aesthetic_head(heads):
    with pytest.raises(ValueError) as err:
        load_head(heads["punsafe"], "aesthetic", "cpu")
    _assert_one_line_naming(err, heads["punsafe"], "LAION CLIP-based NSFW detector", "--punsafe_head")


def test_embeddings_of_another_width_are_refused(heads):
    head = load_head(heads["aesthetic"], "aesthetic", "cpu")
    with pytest.raises(ValueError, match=rf"\[N, {INPUT_DIM}\], got \[3, {INPUT_DIM + 1}\]"):
        head(torch.ones(3, INPUT_DIM + 1))


def test_importing_the_heads_does_not_import_torch():
    code = "import sys, builder.tiny_heads, map_fns.embedding_heads; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False"], proc.stderr[-2000:]
