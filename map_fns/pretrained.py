"""Loading transformers checkpoints with trained weights or not at all."""

from __future__ import annotations


def load_trained(model_class, name: str, role: str, **kwargs):
    """`model_class.from_pretrained(name, **kwargs)`, refusing a checkpoint that would leave weights random.

    transformers only logs a warning for missing weights; a caption run on such a model would produce noise
    for hours without anyone noticing.
    """
    model, info = model_class.from_pretrained(name, output_loading_info=True, **kwargs)
    missing = sorted(info["missing_keys"])
    if missing:
        raise RuntimeError(
            f"{role} {name} checkpoint lacks {len(missing)} weights (e.g. {', '.join(missing[:3])}); "
            "refusing to run with randomly initialised weights"
        )
    return model.eval()
