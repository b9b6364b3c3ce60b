import pytest
import torch
from PIL import Image

from map_fns.precision import open_clip_precision, resolve_dtype
from tests.devices import DEVICES


def test_auto_is_fp32_on_cpu_for_every_model_and_explicit_choices_are_kept():
    for kind in ("transformers", "open_clip"):
        assert resolve_dtype("auto", "cpu", kind) == torch.float32
        assert resolve_dtype("bf16", "cpu", kind) == torch.bfloat16
        assert resolve_dtype("fp16", torch.device("cpu"), kind) == torch.float16
        assert resolve_dtype("fp32", "cuda", kind) == torch.float32


def test_auto_on_cuda_runs_each_model_as_the_reference_did():
    """BLIP and T5 in fp32, CLIP in fp16 (`clip.load` on a GPU), whatever half format the GPU has."""
    assert resolve_dtype("auto", "cuda", "transformers") == torch.float32
    assert resolve_dtype("auto", "cuda:1", "open_clip") == torch.float16


def test_unknown_precision_or_model_kind_is_refused_naming_it():
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        resolve_dtype("half", "cpu", "transformers")
    with pytest.raises(ValueError, match="model_kind must be one of transformers, open_clip, got 'timm'"):
        resolve_dtype("auto", "cpu", "timm")


def test_open_clip_names():
    assert [open_clip_precision(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


class _Loaded(Exception):
    """Raised by a recording loader once it has seen what it was asked for: nothing is loaded onto a GPU."""


def test_each_stage_asks_for_its_own_models_precision_on_a_gpu(tiny_models, monkeypatch):
    """Under `auto` on CUDA the stages load BLIP and T5 in fp32 and both CLIPs in fp16 (recorded at the loader,
    so no GPU is needed)."""
    import map_fns.blip_decode
    import map_fns.clip_score
    import map_fns.rank
    import map_fns.repair
    import map_fns.rerank
    from map_fns.caption import CaptionConfig, make_caption_fn
    from map_fns.rank import RankConfig, make_rank_fn
    from map_fns.repair import RepairConfig, make_repair_fn
    from map_fns.rerank import RerankConfig, make_rerank_fn
    from map_fns.screen import ScreenConfig, make_screen_fn

    asked = {}

    def recorder(stage):
        def load(*args, dtype=None, **kwargs):
            asked[stage] = dtype if dtype is not None else args[-1]
            raise _Loaded
        return load

    monkeypatch.setattr(map_fns.blip_decode, "load_captioner", recorder("caption"))
    monkeypatch.setattr(map_fns.clip_score, "shared_scorer", recorder("screen"))
    monkeypatch.setattr(map_fns.rank, "shared_scorer", recorder("rank"))
    monkeypatch.setattr(map_fns.rerank, "shared_scorer", recorder("rerank"))
    monkeypatch.setattr(map_fns.repair, "load_trained", recorder("repair"))
    for make, cfg in ((make_screen_fn, ScreenConfig(screen_clip=tiny_models.ranker)),
                      (make_caption_fn, CaptionConfig(captioner=tiny_models.captioner)),
                      (make_rank_fn, RankConfig(ranker=tiny_models.ranker)),
                      (make_rerank_fn, RerankConfig(reranker=tiny_models.reranker)),
                      (make_repair_fn, RepairConfig(repairer=tiny_models.repairer))):
        with pytest.raises(_Loaded):
            make(cfg, "cuda", precision="auto")
    assert asked == {"screen": torch.float16, "caption": torch.float32, "rank": torch.float16,
                     "rerank": torch.float16, "repair": torch.float32}


@pytest.mark.parametrize("device", DEVICES)
def test_auto_loads_the_real_models_in_their_precision(tiny_models, device):
    """The stages' models as loaded, on the device: BLIP and T5 in fp32 under `auto`, CLIP in fp16 on a GPU
    (open_clip's mixed fp16: LayerNorms stay fp32)."""
    from map_fns.blip_decode import load_captioner
    from map_fns.clip_score import ClipScorer

    clip_dtype = torch.float16 if device == "cuda" else torch.float32
    blip, _ = load_captioner(tiny_models.captioner, torch.device(device),
                             resolve_dtype("auto", device, "transformers"))
    scorer = ClipScorer(tiny_models.ranker, device, dtype=resolve_dtype("auto", device, "open_clip"))
    assert blip.dtype == torch.float32 and blip.device.type == device
    assert scorer.model.visual.conv1.weight.dtype == clip_dtype
    assert scorer.similarities([Image.new("RGB", (40, 30), "red")], [["a red square"]])[0][0] == pytest.approx(
        ClipScorer(tiny_models.ranker, "cpu").similarities([Image.new("RGB", (40, 30), "red")],
                                                           [["a red square"]])[0][0], abs=2e-2)


@pytest.mark.parametrize(("precision", "tf32"), [("auto", True), ("fp32", False)])
def test_a_model_stage_loader_sets_tf32_for_the_precision(precision, tf32):
    """`auto` lets fp32 matmuls and convolutions use TF32 on GPUs, as torch 1.11 (the reference's) did; `fp32`
    forbids it. Set by the loader every run and benchmark loads the stages with."""
    from map_fns.rerank import STAGE, RerankConfig
    from map_fns.stage import StageContext

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    try:
        STAGE.load(RerankConfig(reranker="none"), StageContext("cpu", precision))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
