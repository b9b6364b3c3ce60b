import pytest
import torch

from map_fns.precision import open_clip_precision, resolve_dtype


def test_auto_is_fp32_on_cpu_and_explicit_choices_are_kept():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert resolve_dtype("fp32", "cpu") == torch.float32


def test_auto_on_cuda_prefers_bf16_and_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:1") == torch.float16


def test_unknown_precision_is_refused_naming_it():
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        resolve_dtype("half", "cpu")


def test_open_clip_names():
    assert [open_clip_precision(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
