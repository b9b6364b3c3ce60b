"""An independent transcription of LAION's reference captioning code, for holding the product to it.

andreaskoepf/laion_idle_cap, `docker/sampling.py` (`generate`, `sample`, `clip_rank`) and `docker/c_h2.py`
(the recipe's settings and the two-stage ranking), re-written plainly from their semantics. Nothing here
comes from `map_fns/` except `map_fns.sampling.row_uniforms`: the reference drew with `torch.multinomial`
from a randomly reseeded global generator, which no one can reproduce, so both sides draw by inverse CDF
from the same per-row uniforms (a documented departure); the oracle turns them into tokens with its own code.
"""
