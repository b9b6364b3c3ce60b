import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipProcessor,
    T5Tokenizer,
)

from builder.tiny_models import (
    LOCAL_DIR_PREFIX,
    VERSION_DIR,
    _build_once,
    build_peaked_captioner,
    build_tiny_models,
    tiny_model_paths,
)
from map_fns.blip_decode import load_captioner


def _images() -> list[Image.Image]:
    gradient = Image.linear_gradient("L").convert("RGB").resize((80, 60))
    return [Image.new("RGB", (50, 70), "red"), Image.new("RGB", (64, 64), "navy"), gradient]


def test_layout_and_spec_forms(tiny_models):
    root = Path(tiny_models.captioner).parent
    assert root.name == VERSION_DIR and root.is_absolute()
    for spec in (tiny_models.ranker, tiny_models.reranker):
        assert spec.startswith(LOCAL_DIR_PREFIX)
        assert Path(spec.removeprefix(LOCAL_DIR_PREFIX)).parent == root
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_paths_are_known_without_building_or_importing_torch(tmp_path):
    code = (
        "import sys; from builder.tiny_models import tiny_model_paths; "
        f"print(tiny_model_paths({str(tmp_path)!r}).repairer, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / VERSION_DIR / "repairer"), "False"]
    assert not (tmp_path / VERSION_DIR).exists()


def test_second_call_is_a_no_op(tmp_path):
    first = build_tiny_models(tmp_path)
    root = tmp_path / VERSION_DIR
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    start = time.perf_counter()
    second = build_tiny_models(str(tmp_path))
    assert time.perf_counter() - start < 0.05
    assert second == first == tiny_model_paths(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_losing_the_rename_race_is_fine(tmp_path):
    target = tmp_path / "model"

    def other_process_wins(out: Path) -> None:
        (out / "mine").write_text("x")
        target.mkdir()
        (target / "theirs").write_text("y")

    _build_once(target, other_process_wins)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["theirs"]


def test_a_crash_leaves_no_half_model(tmp_path):
    def crash(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _build_once(tmp_path / "model", crash)
    assert list(tmp_path.iterdir()) == []


def test_builds_are_deterministic(tiny_models, tmp_path):
    again = build_tiny_models(tmp_path)
    for name in ("captioner", "repairer"):
        a = Path(getattr(tiny_models, name)) / "model.safetensors"
        b = Path(getattr(again, name)) / "model.safetensors"
        assert a.read_bytes() == b.read_bytes()
    for name in ("ranker", "reranker"):
        a = Path(getattr(tiny_models, name).removeprefix(LOCAL_DIR_PREFIX)) / "open_clip_model.safetensors"
        b = Path(getattr(again, name).removeprefix(LOCAL_DIR_PREFIX)) / "open_clip_model.safetensors"
        assert a.read_bytes() == b.read_bytes()


def test_blip_loads_and_tokenises_the_prompt_like_blip_large(tiny_models):
    processor = BlipProcessor.from_pretrained(tiny_models.captioner)
    model, info = BlipForConditionalGeneration.from_pretrained(tiny_models.captioner, output_loading_info=True)
    assert not info["missing_keys"]
    tok = processor.tokenizer
    assert tok.convert_ids_to_tokens(tok("a picture of ").input_ids) == ["[CLS]", "a", "picture", "of", "[SEP]"]
    assert tok.bos_token == "[DEC]"
    text_cfg = model.config.text_config
    assert text_cfg.vocab_size == len(tok)
    assert text_cfg.bos_token_id == tok.convert_tokens_to_ids("[DEC]")
    assert (text_cfg.sep_token_id, text_cfg.pad_token_id) == (tok.sep_token_id, tok.pad_token_id)
    assert "[ENC]" in tok.get_vocab()

    inputs = processor(images=_images()[:2], text=["a picture of "] * 2, return_tensors="pt")
    assert inputs.pixel_values.shape[-2:] == (model.config.vision_config.image_size,) * 2
    out = model.generate(**inputs, do_sample=True, top_p=0.9, max_new_tokens=8, num_return_sequences=3)
    captions = processor.batch_decode(out, skip_special_tokens=True)
    assert len(captions) == 6 and all(c.startswith("a picture of") for c in captions)


@pytest.mark.parametrize("which", ["ranker", "reranker"])
def test_open_clip_models_load_with_clip_tokenizer_and_separate_images(tiny_models, which):
    spec = getattr(tiny_models, which)
    model, preprocess = open_clip.create_model_from_pretrained(spec)  # require_pretrained=True inside
    tokenizer = open_clip.get_tokenizer(spec)
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    assert tokenizer("a dog").shape == (1, 77)
    model.eval()
    with torch.inference_mode():
        feats = model.encode_image(torch.stack([preprocess(im) for im in _images()]), normalize=True)
        text = model.encode_text(tokenizer(["a dog", "a red car"]), normalize=True)
    cos = feats @ feats.T
    off_diagonal = cos[~torch.eye(len(feats), dtype=torch.bool)]
    assert off_diagonal.max() < 0.99, f"{which} maps different images to (nearly) the same embedding"
    assert (text[0] @ text[1]) < 0.99


def test_reranker_is_a_modified_resnet(tiny_models):
    model, _ = open_clip.create_model_from_pretrained(tiny_models.reranker)
    assert type(model.visual).__name__ == "ModifiedResNet"


def test_t5_repairer_loads_with_t5_special_ids(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models.repairer)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.repairer, output_loading_info=True)
    assert isinstance(tok, T5Tokenizer)
    assert not info["missing_keys"]
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert model.config.vocab_size == len(tok) and model.config.decoder_start_token_id == 0
    ids = tok("grammar: a dog on the grass").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    out = model.generate(**tok(["grammar: a dog"], return_tensors="pt"), num_beams=2, max_new_tokens=5)
    assert out.shape[0] == 1


def test_small_on_disk(tiny_models):
    root = Path(tiny_models.captioner).parent
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 20 * 2**20


def test_peaked_captioner_is_deterministic_loads_as_a_captioner_and_sees_the_image(tiny_models, tmp_path):
    """Same weights on every build; the product's loader takes it; unlike the tiny BLIP, different images give
    different next-token logits, and those logits are far from flat."""
    first = build_peaked_captioner(tmp_path / "a")
    second = build_peaked_captioner(tmp_path / "b")
    assert (Path(first) / "model.safetensors").read_bytes() == (Path(second) / "model.safetensors").read_bytes()
    model, processor = load_captioner(first, torch.device("cpu"))  # refuses missing weights
    tiny, _ = load_captioner(tiny_models.captioner, torch.device("cpu"))
    assert model.config.to_dict() | {"_name_or_path": ""} == tiny.config.to_dict() | {"_name_or_path": ""}
    pixels = processor.image_processor(_images(), return_tensors="pt").pixel_values
    prompt = torch.tensor([[model.config.text_config.bos_token_id, 5, 6]] * len(pixels))
    with torch.inference_mode():
        peaked_logits, tiny_logits = (
            m.text_decoder(input_ids=prompt, encoder_hidden_states=m.vision_model(pixel_values=pixels)[0]).logits[:, -1]
            for m in (model, tiny))
    assert (peaked_logits[0] - peaked_logits[1]).abs().max() > 1.0
    assert (tiny_logits[0] - tiny_logits[1]).abs().max() < 1e-4  # why the tiny one cannot exercise the rules
    assert peaked_logits.softmax(-1).max(-1).values.min() > 0.05 > 0.01 > tiny_logits.softmax(-1).max()  # 1/330 flat
