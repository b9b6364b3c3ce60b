import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BartTokenizer,
    BertTokenizer,
    Blip2ForConditionalGeneration,
    Florence2ForConditionalGeneration,
    GemmaTokenizer,
    GitForCausalLM,
    GPT2Tokenizer,
    InstructBlipForConditionalGeneration,
    LlavaForConditionalGeneration,
    PaliGemmaForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLForConditionalGeneration,
    SmolVLMForConditionalGeneration,
    T5Tokenizer,
    TokenizersBackend,
)

from builder.source import bundled_sample
from builder.tiny_captioners import MORE_TINY_FAMILIES, TINY_FAMILIES, build_tiny_captioner, caption_inputs
from builder.tiny_models import VERSION_DIR, caption_corpus
from map_fns.pretrained import load_trained

EXPECTED_CLASSES = {
    "blip-2": (Blip2ForConditionalGeneration, GPT2Tokenizer),
    "git": (GitForCausalLM, BertTokenizer),
    "qwen2_vl": (Qwen2VLForConditionalGeneration, Qwen2Tokenizer),
    "instructblip": (InstructBlipForConditionalGeneration, T5Tokenizer),
    "florence2": (Florence2ForConditionalGeneration, BartTokenizer),
    "paligemma": (PaliGemmaForConditionalGeneration, GemmaTokenizer),
    # transformers loads these two families' tokenizers as TokenizersBackend whatever their config names (it
    # distrusts their Hub checkpoints' tokenizer_class), so the real checkpoints load the same way
    "smolvlm": (SmolVLMForConditionalGeneration, TokenizersBackend),
    "llava": (LlavaForConditionalGeneration, TokenizersBackend),
}
ALL_FAMILIES = TINY_FAMILIES + MORE_TINY_FAMILIES
EOS_THRESHOLD = 0.17937666742679637  # the recipe's early stop on raw P(EOS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-captioners")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    rows = pq.read_table(bundled_sample(), columns=["image"]).to_pylist()
    return [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]


def _load(folder: str):
    return AutoProcessor.from_pretrained(folder), load_trained(AutoModelForImageTextToText, folder, "captioner")


def _stacked(per_image: list[dict]) -> dict:
    """Inputs of images of one shape as one batch."""
    return {key: torch.cat([inputs[key] for inputs in per_image]) for key in per_image[0]}


def _eos(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return eos if isinstance(eos, list) else [eos]


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_loads_through_the_auto_classes_and_generates_per_image(cache, photos, model_type):
    folder = build_tiny_captioner(model_type, cache)
    assert Path(folder) == cache.resolve() / VERSION_DIR / f"captioner-{model_type}"
    processor, model = _load(folder)  # load_trained raises on any missing weight
    model_class, tokenizer_class = EXPECTED_CLASSES[model_type]
    assert type(model) is model_class and type(processor.tokenizer) is tokenizer_class
    assert model.config.model_type == model_type

    inputs = _stacked([caption_inputs(processor, model, model_type, photo) for photo in photos[:2]])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        logits = model(**inputs).logits[:, -1]
    assert out.shape == (2, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])  # the prompt comes back first
    assert (logits[0] - logits[1]).abs().max() > 1e-3, "the vision side maps both images alike"


@pytest.mark.parametrize("model_type", MORE_TINY_FAMILIES)
def test_more_families_load_through_the_auto_classes_and_see_the_image(cache, photos, model_type):
    """One forward on two photographs of different shapes: the real classes, and logits that differ by image."""
    processor, model = _load(build_tiny_captioner(model_type, cache))  # load_trained raises on any missing weight
    model_class, tokenizer_class = EXPECTED_CLASSES[model_type]
    assert type(model) is model_class and type(processor.tokenizer) is tokenizer_class
    assert model.config.model_type == model_type
    logits = []
    for photo in (photos[0], photos[3]):
        inputs = caption_inputs(processor, model, model_type, photo)
        if model.config.get_text_config().is_encoder_decoder:  # the caption is the decoder's, from its start token
            start = model.config.get_text_config(decoder=True).decoder_start_token_id
            inputs["decoder_input_ids"] = torch.full((1, 1), start)
        with torch.no_grad():
            logits.append(model(**inputs).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-3, "the vision side maps both images alike"


@pytest.mark.parametrize("model_type", ALL_FAMILIES)
def test_a_caption_round_trips_through_the_tokenizer(cache, model_type):
    tokenizer = AutoProcessor.from_pretrained(build_tiny_captioner(model_type, cache)).tokenizer
    sentences = [s for s in caption_corpus() if "," in s and s.endswith(".")][:3] + caption_corpus()[:3]
    for sentence in sentences:
        ids = tokenizer(sentence, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == sentence


@pytest.mark.parametrize("model_type", ALL_FAMILIES)
def test_the_build_is_deterministic(tmp_path, cache, model_type):
    first = Path(build_tiny_captioner(model_type, cache))
    second = Path(build_tiny_captioner(model_type, tmp_path))
    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())  # InstructBLIP: subfolder
    assert "model.safetensors" in files and files == sorted(str(p.relative_to(second)) for p in second.rglob("*")
                                                            if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_each_family_stops_where_its_real_checkpoint_does(cache):
    """BLIP-2 (OPT) ends a caption with a newline, not `</s>`; Qwen2-VL with `<|im_end|>` or `<|endoftext|>`."""
    stops = {}
    for model_type in ALL_FAMILIES:
        processor, model = _load(build_tiny_captioner(model_type, cache))
        stops[model_type] = processor.tokenizer.convert_ids_to_tokens(_eos(model))
        pad = model.generation_config.pad_token_id
        assert processor.tokenizer.convert_ids_to_tokens(pad) == processor.tokenizer.pad_token
    assert stops == {"blip-2": ["Ċ"], "git": ["[SEP]"], "qwen2_vl": ["<|im_end|>", "<|endoftext|>"],
                     "instructblip": ["</s>"], "florence2": ["</s>"], "paligemma": ["<eos>"],
                     "smolvlm": ["<end_of_utterance>"], "llava": ["<|im_end|>", "<|endoftext|>"]}


def test_unknown_model_type_names_itself_and_the_tiny_ones(cache):
    with pytest.raises(ValueError, match=r"'mllama'.*blip-2, git, qwen2_vl, instructblip, florence2, paligemma, "
                                         r"smolvlm, llava\)"):
        build_tiny_captioner("mllama", cache)
    assert not (cache / VERSION_DIR / "captioner-mllama").exists()


def test_a_family_without_a_peaked_build_says_so(cache):
    with pytest.raises(ValueError, match=r"no peaked tiny captioner of model_type 'llava' \(peaked ones: blip-2, git, "
                                         r"qwen2_vl\)"):
        build_tiny_captioner("llava", cache, peaked=True)
    assert not (cache / VERSION_DIR / "captioner-llava-peaked").exists()


def test_qwen2_vl_chat_prompt_holds_the_image_and_its_length_follows_the_shape(cache):
    processor = AutoProcessor.from_pretrained(build_tiny_captioner("qwen2_vl", cache))
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    wide, tall = Image.new("RGB", (120, 40), "red"), Image.new("RGB", (40, 80), "red")
    lengths = []
    for image in (wide, tall):
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
        assert image_tokens == inputs["image_grid_thw"].prod() // processor.image_processor.merge_size**2
        lengths.append(inputs["input_ids"].shape[1])
    assert lengths[0] != lengths[1]


def _rollout_figures(model_type: str, folder: str, photos: list[Image.Image], steps: int = 8) -> dict:
    """Greedy rollouts (EOS held back) on all photographs at once: raw next-token probabilities at every step."""
    processor, model = _load(folder)
    logits = []
    for photo in photos:  # one at a time: Qwen2-VL prompts differ in length with the photograph's shape
        with torch.no_grad():
            out = model.generate(**caption_inputs(processor, model, model_type, photo), max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        logits.append(torch.stack(out.logits, 1))
    probs = torch.cat(logits).float().softmax(-1)  # image, step, token
    eos_probs = probs[..., _eos(model)[0]]
    return {"mean_max_prob": probs.max(-1).values.mean().item(), "eos_steps": int((eos_probs > EOS_THRESHOLD).sum()),
            "first_tokens": len(set(probs[:, 0].argmax(-1).tolist()))}


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_peaked_build_is_peaked_steered_by_the_image_and_sometimes_ends(cache, photos, model_type):
    folder = build_tiny_captioner(model_type, cache, peaked=True)
    assert folder.endswith(f"captioner-{model_type}-peaked")
    figures = _rollout_figures(model_type, folder, photos)
    assert figures["mean_max_prob"] > 0.5, figures
    assert figures["eos_steps"] > 0, figures
    assert figures["first_tokens"] >= 2, figures
