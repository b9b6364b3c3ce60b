"""LAION-COCO's captioning loop, re-implemented plainly: one image at a time, every caption scored alone.

Two uses: the baseline `bench/recipe.py` measures the fast stages against, and the one the tests hold their
batching and caching to (same candidates, same chosen caption for the same seed: speed never changes results).
It shares the recipe's rules with the fast path (`sampling.next_tokens`, the per-row uniforms, top-k and argmax
choice, the caption decoding), so it cannot catch a departure from the recipe: the rules are tested against
`tests/oracle/`, an independent transcription of LAION's code. The model calls are the straightforward ones:
transformers' own `text_decoder` with its cache and the image's encoder states repeated per candidate,
open_clip's `encode_image` / `encode_text` at the full 77 tokens with batch 1, one `generate` per repaired
caption. Everything in fp32.
"""

from __future__ import annotations

import torch

from map_fns import sampling
from map_fns.captioners import BLIP, prompt_for
from map_fns.blip_decode import load_captioner, prompt_token_ids, unique_captions
from map_fns.caption import CaptionConfig
from map_fns.clip_score import ClipScorer
from map_fns.pretrained import load_trained
from map_fns.rank import RankConfig, top_k_by_score
from map_fns.repair import NONE as NO_REPAIR
from map_fns.repair import RepairConfig
from map_fns.rerank import NONE as NO_RERANK
from map_fns.rerank import RerankConfig, best_index


class ReferenceLoop:
    """The four models in fp32 on `device`; `run` captions one image."""

    def __init__(self, caption: CaptionConfig, rank: RankConfig, rerank: RerankConfig, repair: RepairConfig,
                 device: str | torch.device = "cpu"):
        self.cfg, self.keep_top = caption, rank.keep_top
        self.device = torch.device(device)
        self.blip, self.processor = load_captioner(caption.captioner, self.device)
        text = self.blip.config.text_config
        self.prompt = prompt_for(BLIP, caption.caption_prompt)
        self.prompt_ids = prompt_token_ids(self.processor.tokenizer, self.prompt, text.bos_token_id,
                                           text.sep_token_id)
        self.ranker = ClipScorer(rank.ranker, self.device)
        self.reranker = None if rerank.reranker == NO_RERANK else ClipScorer(rerank.reranker, self.device)
        self.repair_cfg = repair
        if repair.repairer != NO_REPAIR:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self.repair_tokenizer = AutoTokenizer.from_pretrained(repair.repairer)
            self.repairer = load_trained(AutoModelForSeq2SeqLM, repair.repairer, "repairer").to(self.device)

    @torch.inference_mode()
    def run(self, image, row_key: str) -> dict:
        """Candidates, ranked shortlist with both rankers' similarities, and the chosen and repaired caption."""
        candidates = unique_captions(self.processor.tokenizer, self.sample(image, row_key), self.prompt_ids,
                                     self.prompt)
        if not candidates:
            return {"candidates": []}
        scores = _similarities_one_by_one(self.ranker, image, candidates)
        shortlist, similarities = top_k_by_score(candidates, scores, self.keep_top)
        rerank_similarities, chosen = None, shortlist[0]
        if self.reranker is not None:
            rerank_similarities = _similarities_one_by_one(self.reranker, image, shortlist)
            chosen = shortlist[best_index(rerank_similarities)]
        return {"candidates": candidates, "all_captions": shortlist, "all_similarities": similarities,
                "rerank_similarities": rerank_similarities, "top_caption_raw": chosen,
                "top_caption": self.repair(chosen)}

    def sample(self, image, row_key: str) -> list[list[int]]:
        """The image's candidates' token ids: transformers' decoder, finished candidates leaving every step."""
        cfg, eos = self.cfg, self.blip.config.text_config.sep_token_id
        num_steps, max_lengths = max(cfg.max_lengths), torch.tensor(cfg.max_lengths, device=self.device)
        uniforms = sampling.row_uniforms(cfg.seed, row_key, cfg.num_candidates, num_steps).to(self.device)
        pixels = self.processor.image_processor([image], return_tensors="pt").pixel_values.to(self.device)
        encoder_states = self.blip.vision_model(pixel_values=pixels)[0].repeat_interleave(cfg.num_candidates, 0)
        active = torch.arange(cfg.num_candidates, device=self.device)
        sequences = torch.tensor(self.prompt_ids, device=self.device).expand(len(active), -1)
        step_input, cache, results = sequences, None, {}
        for step in range(num_steps):
            out = self.blip.text_decoder(input_ids=step_input, encoder_hidden_states=encoder_states[active],
                                         cache=cache, use_cache=True, logits_to_keep=1)
            tokens, eos_stop = sampling.next_tokens(
                out.logits[:, -1], sequences, step, uniforms[active, step], eos_token_ids=[eos],
                min_length=cfg.min_length, repetition_penalty=cfg.repetition_penalty, top_k=cfg.top_k,
                top_p=cfg.top_p, eos_stop_probability=cfg.eos_stop_probability,
            )
            sequences = torch.cat([sequences, tokens.unsqueeze(-1)], dim=-1)
            without_token = eos_stop | (tokens == eos)
            with_token = ~without_token & (max_lengths[active] <= step + 1)
            generated = sequences[:, len(self.prompt_ids):].tolist()
            for candidate, ids, ends, cut in zip(active.tolist(), generated, (without_token | with_token).tolist(),
                                                 without_token.tolist()):
                if ends:
                    results[candidate] = ids[: step + 1 - cut]
            keep = (~(without_token | with_token)).nonzero().squeeze(-1)
            if len(keep) == 0:
                break
            out.cache.batch_select_indices(keep)
            active, sequences = active[keep], sequences[keep]
            step_input, cache = tokens[keep].unsqueeze(-1), out.cache
        return [results[i] for i in range(cfg.num_candidates)]

    def repair(self, caption: str) -> str:
        if self.repair_cfg.repairer == NO_REPAIR:
            return caption
        cfg = self.repair_cfg
        inputs = self.repair_tokenizer([cfg.repair_prefix + caption], return_tensors="pt").to(self.device)
        out = self.repairer.generate(**inputs, **cfg.generate_kwargs())
        text = self.repair_tokenizer.decode(out[0], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=cfg.repair_clean_up_spaces)
        return text.strip() or caption


def _similarities_one_by_one(scorer: ClipScorer, image, captions: list[str]) -> list[float]:
    """Cosine similarity of each caption to the image, each caption encoded alone at the full context."""
    model = scorer.model
    pixels = scorer.preprocess(image).unsqueeze(0).to(scorer.device)
    image_embedding = torch.nn.functional.normalize(model.encode_image(pixels).double(), dim=-1)[0]
    scores = []
    for caption in captions:
        text = torch.nn.functional.normalize(model.encode_text(scorer.tokenizer([caption]).to(scorer.device)).double(),
                                             dim=-1)[0]
        scores.append(float(text @ image_embedding))
    return scores
