"""The answer loss of the Gemma base with the question's keys and values computed once.

The prompt puts the question before the image, so everything up to the first image token does not depend on
the picture nor on the trainable parts: with only a handful of distinct questions in the built-in families,
:class:`PrefixCachedLoss` runs those prefixes through the frozen Gemma once (no gradient), keeps their keys
and values, and each training step runs only the image tokens, the rest of the prompt and the answer through
the 18 layers, forward and backward, with logits at the answer positions alone. The loss equals
:func:`safe.bench.gemma.base.answer_loss` on the same rows (a test checks it to float tolerance); a step costs
about a third as much. With ``dtype=torch.bfloat16`` the steps run through a bfloat16 *copy* of the frozen
language model (about twice as fast again on CPUs with bfloat16 instructions); the model's own float32 Gemma,
which is saved and checked, is never cast or touched.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class PrefixCachedLoss:
    """Cross-entropy on the answer tokens of prompts ``prompts[i] + answers[i]`` (token ids, one image
    placeholder run per prompt), with each distinct prefix (the ids before the first image token) encoded
    once by the frozen language model."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                 image_token: int, pad: int, dtype: torch.dtype | None = None):
        self.model, self.pad, self.image = model, pad, image_token
        self.lm, self.head = model.model.language_model, model.lm_head
        if dtype is not None and dtype != self.lm.embed_tokens.weight.dtype:
            self.lm = copy.deepcopy(self.lm).to(dtype).requires_grad_(False)
            self.head = copy.deepcopy(model.lm_head).to(dtype).requires_grad_(False)
            if model.config.text_config.tie_word_embeddings:
                self.head.weight = self.lm.embed_tokens.weight
        lm = self.lm
        keys: dict[tuple[int, ...], int] = {}
        self.row_prefix, self.rests, self.n_answer = [], [], []
        for p, a in zip(prompts, answers):
            cut = list(p).index(image_token)
            self.row_prefix.append(keys.setdefault(tuple(p[:cut]), len(keys)))
            self.rests.append(list(p[cut:]) + list(a[:-1]))  # the last answer token is only a target
            self.n_answer.append(len(a))
        self.targets = [list(a) for a in answers]
        prefixes = list(keys)
        width = max(map(len, prefixes))
        ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
        self.prefix_mask = torch.zeros_like(ids)
        for i, p in enumerate(prefixes):  # left-padded, as the prompt batches are
            ids[i, width - len(p):], self.prefix_mask[i, width - len(p):] = torch.tensor(p), 1
        self.prefix_len = self.prefix_mask.sum(1)
        with torch.no_grad():
            out = lm(input_ids=ids, attention_mask=self.prefix_mask,
                     position_ids=(self.prefix_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        self.cache = out.cache
        self.n_prefixes, self.width = len(prefixes), width

    def __call__(self, index: Sequence[int], pixels: torch.Tensor) -> torch.Tensor:
        """The mean answer-token cross-entropy of rows ``index`` with pictures ``pixels``."""
        model, lm = self.model, self.lm
        q = torch.tensor([self.row_prefix[i] for i in index])
        rests = [self.rests[i] for i in index]
        s = max(map(len, rests))
        ids = torch.full((len(index), s), self.pad, dtype=torch.long)
        for j, r in enumerate(rests):  # right-padded: causal attention keeps pads out of earlier positions
            ids[j, :len(r)] = torch.tensor(r)
        feats = model.model.get_image_features(pixel_values=pixels)
        feats = getattr(feats, "pooler_output", feats)
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
        emb = lm.embed_tokens(ids)
        is_image = (ids == self.image).unsqueeze(-1)
        emb = emb.masked_scatter(is_image, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(q)
        mask = torch.cat([self.prefix_mask[q], torch.ones(len(index), s, dtype=torch.long)], 1)
        pos = self.prefix_len[q, None] + torch.arange(s)[None]
        hidden = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True).last_hidden_state
        rows, cols, target = [], [], []
        for j, i in enumerate(index):
            end = len(rests[j])  # the answer is predicted from the last n_answer positions of the rest
            rows += [j] * self.n_answer[i]
            cols += range(end - self.n_answer[i], end)
            target += self.targets[i]
        logits = self.head(hidden[rows, cols])
        cap = getattr(model.config.text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits.float(), torch.tensor(target))
