import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

import map_fns.batching
import map_fns.repair as repair_module
from map_fns.repair import RepairConfig, bytes_per_caption, make_repair_fn
from map_fns.status import DECODE_ERROR, OK

CAPTIONS = ["a dog sitting on on the grass", "cat", "a red car parked next to a white house on the street"]


def _batch() -> dict[str, list]:
    return {
        "status": [OK, DECODE_ERROR, OK, OK],
        "top_caption_raw": [CAPTIONS[0], None, CAPTIONS[1], CAPTIONS[2]],
    }


def test_defaults_follow_laion_coco():
    cfg = RepairConfig()
    assert (cfg.repairer, cfg.repair_prefix, cfg.repair_num_beams, cfg.repair_max_new_tokens) == (
        "vennify/t5-base-grammar-correction", "grammar: ", 2, 64
    )
    # generate's and decode's own defaults: what the repair passed before these flags existed
    assert (cfg.repair_repetition_penalty, cfg.repair_early_stopping, cfg.repair_clean_up_spaces) == (1.0, False, False)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"repairer": ""}, "--repairer"),
        ({"repair_num_beams": 0}, "--repair_num_beams"),
        ({"repair_max_new_tokens": -1}, "--repair_max_new_tokens"),
        ({"repair_max_new_tokens": "64"}, "--repair_max_new_tokens"),
        ({"repair_repetition_penalty": 0.0}, "--repair_repetition_penalty"),
    ],
)
def test_config_rejects_bad_values_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError) as err:
        RepairConfig(**kwargs)
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


def test_batched_repair_equals_one_row_at_a_time_generate(tiny_models):
    cfg = RepairConfig(repairer=tiny_models.repairer, repair_num_beams=2, repair_max_new_tokens=12)
    out = make_repair_fn(cfg, "cpu")(_batch())
    assert set(out) == {"top_caption"}

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.repairer)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.repairer).eval()
    expected = []
    for caption in CAPTIONS:
        inputs = tokenizer(cfg.repair_prefix + caption, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, num_beams=2, max_new_tokens=12, do_sample=False)
        expected.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    assert out["top_caption"] == [expected[0], None, expected[1], expected[2]]
    assert len(set(expected)) == len(expected) and all(expected), "tiny T5 outputs must tell rows apart"


# --- generation settings: SimpleT5's predict, as LAION's own code called it ----------------------------------

SIMPLET5_CAPTIONS = [*CAPTIONS, "a park with a table and a road", "two birds on a window"]


def _simplet5_predict(model, tokenizer, text: str, max_length: int) -> str:
    """simplet5 0.1.4's `SimpleT5.predict(text)` with its defaults, transcribed: `encode`, then `generate` with
    what predict passes (do_sample is not among it), then `decode` with its own cleanup."""
    input_ids = tokenizer.encode(text, return_tensors="pt", add_special_tokens=True)
    ids = model.generate(input_ids=input_ids, num_beams=2, max_length=max_length, repetition_penalty=2.5,
                         length_penalty=1.0, early_stopping=True, top_p=0.95, top_k=50, num_return_sequences=1)
    return tokenizer.decode(ids[0], skip_special_tokens=True, clean_up_tokenization_spaces=True)


def test_simplet5_settings_repair_as_simplet5_predicts(tiny_models, monkeypatch):
    """The laion-idle-cap preset's repair settings, as flags, give SimpleT5's predict output caption by caption
    (its max_length counts the decoder's start token: max_new_tokens is one less). The prefix is the preset's."""
    settings = []
    _recording_repairer(monkeypatch, settings=settings)
    cfg = RepairConfig(repairer=tiny_models.repairer, repair_num_beams=2, repair_max_new_tokens=12,
                       repair_repetition_penalty=2.5, repair_early_stopping=True, repair_clean_up_spaces=True)
    batch = {"status": [OK] * len(SIMPLET5_CAPTIONS), "top_caption_raw": SIMPLET5_CAPTIONS}
    repaired = make_repair_fn(cfg, "cpu")(batch)["top_caption"]
    assert settings and all(call["repetition_penalty"] == 2.5 and call["early_stopping"] is True for call in settings)

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.repairer)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.repairer).eval()
    with torch.no_grad():
        predicted = [_simplet5_predict(model, tokenizer, cfg.repair_prefix + caption, max_length=13).strip()
                     for caption in SIMPLET5_CAPTIONS]
    assert repaired == predicted
    plain = make_repair_fn(RepairConfig(repairer=tiny_models.repairer, repair_max_new_tokens=12), "cpu")(batch)
    plain = plain["top_caption"]
    assert plain != repaired, "the penalty must change some repair of the tiny T5, or this test proves nothing"


@pytest.fixture(scope="module")
def scripted_t5(tiny_models, tmp_path_factory) -> str:
    """A T5 (the tiny one's shape and tokenizer) whose next token depends only on the previous one: after the start
    'a'; after 'a' 'a' again (logit 10) over the separate piece '▁' (logit 9); then '.', then the end. Every
    decoder sub-layer writes zeros, so the decoder's output is the previous token's embedding, a unit vector
    that the output layer maps to those logits exactly (the final norm's weight is 1)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.repairer)
    config = T5Config.from_pretrained(tiny_models.repairer)
    config.tie_word_embeddings = False
    model = T5ForConditionalGeneration(config).eval()
    a, space, dot = tokenizer.convert_tokens_to_ids(["▁a", "▁", "."])
    script = {config.decoder_start_token_id: {a: 10.0}, a: {a: 10.0, space: 9.0}, space: {dot: 10.0},
              dot: {tokenizer.eos_token_id: 10.0}}
    with torch.no_grad():
        for block in model.decoder.block:
            block.layer[0].SelfAttention.o.weight.zero_()
            block.layer[1].EncDecAttention.o.weight.zero_()
            block.layer[2].DenseReluDense.wo.weight.zero_()
        model.decoder.final_layer_norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        embeddings = model.decoder.embed_tokens.weight
        for unit, (previous, logits) in enumerate(script.items()):
            embeddings[previous] = 0.0
            embeddings[previous, unit] = 1.0
            for token, logit in logits.items():
                model.lm_head.weight[token, unit] = logit * config.d_model ** 0.5  # undoes T5's output scaling
    path = tmp_path_factory.mktemp("scripted-t5")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({}, "a a a a a a"),  # no penalty: 'a' (10) beats '▁' (9) every time, up to the 6 tokens
        ({"repair_repetition_penalty": 2.5}, "a ."),  # 'a' once written: 10 / 2.5 = 4 < 9
        ({"repair_repetition_penalty": 2.5, "repair_clean_up_spaces": True}, "a."),
    ],
    ids=["defaults", "repetition penalty", "and space cleanup"],
)
def test_each_repair_setting_reaches_generation(scripted_t5, settings, expected):
    cfg = RepairConfig(repairer=scripted_t5, repair_prefix="", repair_num_beams=1, repair_max_new_tokens=6, **settings)
    out = make_repair_fn(cfg, "cpu")({"status": [OK, DECODE_ERROR], "top_caption_raw": ["a dog", None]})
    assert out["top_caption"] == [expected, None]


def test_a_repair_that_comes_back_empty_keeps_the_chosen_caption(tiny_models, tmp_path):
    """A repairer whose every logit is 0 emits only padding, which decodes to ''; the caption must survive."""
    mute = tmp_path / "mute-t5"
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.repairer)
    torch.nn.init.zeros_(model.get_output_embeddings().weight)
    model.save_pretrained(mute)
    AutoTokenizer.from_pretrained(tiny_models.repairer).save_pretrained(mute)
    out = make_repair_fn(RepairConfig(repairer=str(mute), repair_max_new_tokens=4), "cpu")(_batch())
    assert out["top_caption"] == [CAPTIONS[0], None, CAPTIONS[1], CAPTIONS[2]]


def _recording_repairer(monkeypatch, settings: list[dict] | None = None) -> tuple[list, list[list[int]]]:
    """The models `make_repair_fn` loads, and the unpadded input lengths of every `generate` call; its other
    arguments (the generation settings) go to `settings` when given."""
    models, calls = [], []

    def load_trained(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_generate = model.generate

        def generate(**inputs):
            calls.append(inputs["attention_mask"].sum(dim=1).tolist())
            if settings is not None:
                settings.append({key: value for key, value in inputs.items()
                                 if key not in ("input_ids", "attention_mask")})
            return real_generate(**inputs)

        model.generate = generate
        models.append(model)
        return model

    real_load = repair_module.load_trained
    monkeypatch.setattr(repair_module, "load_trained", load_trained)
    return models, calls


def _repaired(tiny_models, **engine) -> list[str | None]:
    cfg = RepairConfig(repairer=tiny_models.repairer, repair_num_beams=2, repair_max_new_tokens=12)
    return make_repair_fn(cfg, "cpu", **engine)(_batch())["top_caption"]


def test_one_caption_per_generate_gives_the_same_repairs(tiny_models, monkeypatch):
    whole = _repaired(tiny_models)
    _, calls = _recording_repairer(monkeypatch)
    assert _repaired(tiny_models, model_batch_size=1) == whole
    assert [len(call) for call in calls] == [1, 1, 1]


def test_captions_go_shortest_first_and_come_back_in_row_order(tiny_models, monkeypatch):
    whole = _repaired(tiny_models)
    _, calls = _recording_repairer(monkeypatch)
    assert _repaired(tiny_models, model_batch_size=2) == whole
    lengths = [n for call in calls for n in call]
    assert [len(call) for call in calls] == [2, 1] and lengths == sorted(lengths) and len(set(lengths)) == 3


def test_sub_batches_sized_to_free_memory(tiny_models, monkeypatch):
    whole = _repaired(tiny_models)
    models, calls = _recording_repairer(monkeypatch)
    room = 2.5 / map_fns.batching.MEMORY_HEADROOM  # for 2.5 captions of the model as loaded
    monkeypatch.setattr(map_fns.batching, "free_device_memory",
                        lambda device: int(bytes_per_caption(models[0], num_beams=2, max_new_tokens=12) * room))
    assert _repaired(tiny_models) == whole
    assert [len(call) for call in calls] == [2, 1]


def test_precision_reaches_the_repairer(tiny_models, monkeypatch):
    models, _ = _recording_repairer(monkeypatch)
    repaired = _repaired(tiny_models, precision="bf16")
    assert models[0].dtype == torch.bfloat16
    assert repaired[1] is None and all(isinstance(text, str) for i, text in enumerate(repaired) if i != 1)
    with pytest.raises(ValueError, match="--precision"):
        _repaired(tiny_models, precision="half")


def test_fp16_keeps_the_layers_t5_needs_in_fp32(tiny_models, monkeypatch):
    models, _ = _recording_repairer(monkeypatch)
    assert all(isinstance(text, str) for i, text in enumerate(_repaired(tiny_models, precision="fp16")) if i != 1)
    feed_forward = models[0].encoder.block[0].layer[1].DenseReluDense
    assert (feed_forward.wi.weight.dtype, feed_forward.wo.weight.dtype) == (torch.float16, torch.float32)


def test_batch_without_ok_rows(tiny_models):
    repair = make_repair_fn(RepairConfig(repairer=tiny_models.repairer), "cpu")
    assert repair({"status": [DECODE_ERROR], "top_caption_raw": [None]}) == {"top_caption": [None]}


def test_none_passes_the_raw_caption_through_without_a_model(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("repairer 'none' must not load a model")

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", no_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_model)
    out = make_repair_fn(RepairConfig(repairer="none"), "cpu", precision="bf16", model_batch_size=1)(_batch())
    assert out == {"top_caption": [CAPTIONS[0], None, CAPTIONS[1], CAPTIONS[2]]}


def test_refuses_a_checkpoint_with_missing_weights(tiny_models, tmp_path):
    broken = tmp_path / "t5"
    shutil.copytree(tiny_models.repairer, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert dropped in weights
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="random") as err:
        make_repair_fn(RepairConfig(repairer=str(broken)), "cpu")
    assert dropped in str(err.value)


def test_flag_checking_imports_no_torch():
    code = (
        "import sys, map_fns.repair; map_fns.repair.RepairConfig(); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
