import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

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


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"repairer": ""}, "--repairer"),
        ({"repair_num_beams": 0}, "--repair_num_beams"),
        ({"repair_max_new_tokens": -1}, "--repair_max_new_tokens"),
        ({"repair_max_new_tokens": "64"}, "--repair_max_new_tokens"),
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


def test_a_repair_that_comes_back_empty_keeps_the_chosen_caption(tiny_models, tmp_path):
    """A repairer whose every logit is 0 emits only padding, which decodes to ''; the caption must survive."""
    mute = tmp_path / "mute-t5"
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.repairer)
    torch.nn.init.zeros_(model.get_output_embeddings().weight)
    model.save_pretrained(mute)
    AutoTokenizer.from_pretrained(tiny_models.repairer).save_pretrained(mute)
    out = make_repair_fn(RepairConfig(repairer=str(mute), repair_max_new_tokens=4), "cpu")(_batch())
    assert out["top_caption"] == [CAPTIONS[0], None, CAPTIONS[1], CAPTIONS[2]]


def _recording_repairer(monkeypatch) -> tuple[list, list[list[int]]]:
    """The models `make_repair_fn` loads, and the unpadded input lengths of every `generate` call."""
    models, calls = [], []

    def load_trained(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_generate = model.generate

        def generate(**inputs):
            calls.append(inputs["attention_mask"].sum(dim=1).tolist())
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
