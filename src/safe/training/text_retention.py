"""Text-only retention for Stage A: prompts with no image, whose reference is the frozen base's own greedy answer.

The retention KL of Stage A (:func:`safe.training.losses.retention_kl`) is measured on VL rows: a question
about an image, the gate open, an unrelated clip attached. A real language model is also asked things with no
image at all (facts, completions, arithmetic), and its hidden states there differ from those of a VL row: on
the Gemma track the adapters trained on VL rows alone left the VL answers untouched with the gate open and
moved a third of the text-only answers. This module adds those rows to the same KL:

* :func:`load_prompts` reads a JSON Lines file of prompts (``{"prompt": "..."}`` per line), in the form the
  base reads them;
* :class:`TextRetention` computes the base's greedy answer to each prompt once (cached beside the run's
  checkpoints, keyed by the prompts and the base's hash, so a resumed run reuses it), and builds, for the
  rows a step draws, the left-padded prompt + answer with labels on the answer tokens (the stop token
  included): the positions where the KL pulls SAFE's distribution (gate open) onto the base's.

The rows a step draws depend only on the seed, the step, the micro-batch and the process (a resumed run draws
the same ones); the unrelated clips come from the training split's encoder outputs, drawn the same way.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from safe.atomic import write_atomic
from safe.training.losses import IGNORE_INDEX

#: Cache file of the base's reference answers (under the run's checkpoints folder).
ANSWERS_FILE = "text_retention_answers.json"


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSON Lines file: one object per line with a non-empty string ``prompt`` (blank lines
    skipped). Raises ``FileNotFoundError`` / ``ValueError`` naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text_retention: no file {p}")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}, line {n}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise ValueError(f"{p}, line {n}: expected an object with a non-empty string 'prompt', got {line[:80]!r}")
        prompts.append(obj["prompt"])
    if not prompts:
        raise ValueError(f"{p}: no prompts")
    return prompts


def write_prompts(path: str | Path, prompts: Sequence[str]) -> Path:
    """Write ``prompts`` as :func:`load_prompts` reads them (only when the file's content would change)."""
    p = Path(path)
    text = "".join(json.dumps({"prompt": x}, ensure_ascii=False) + "\n" for x in prompts)
    if not p.is_file() or p.read_text(encoding="utf-8") != text:
        write_atomic(p, text)
    return p


def _stop_ids(base) -> set[int]:
    eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


class TextRetention:
    """Text-only prompts and the base's greedy answers to them, as Stage A's retention rows.

    Guarantees: the reference answers are the frozen base's own (greedy, at most ``max_answer_tokens`` tokens,
    ending at the first stop token, which is kept); they are computed once per prompt set and base and read
    back on resume; :meth:`draw` is a pure function of its arguments; :meth:`batch` puts every answer at the
    end of its row (left padding), so a head computed on the last positions only sees all of them.
    """

    def __init__(self, prompts: Sequence[str], tok, base_model, *, max_answer_tokens: int = 8,
                 cache_dir: str | Path | None = None, base_hash: str = "", batch_size: int = 16,
                 device: torch.device | str = "cpu", progress: bool = False) -> None:
        if not prompts:
            raise ValueError("text_retention: no prompts")
        self.prompts = list(prompts)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.device = torch.device(device)
        self.prompt_ids = [tok(p, add_special_tokens=True)["input_ids"] for p in self.prompts]
        key = hashlib.sha256(json.dumps([self.prompts, base_hash, max_answer_tokens]).encode()).hexdigest()
        cache = Path(cache_dir) / ANSWERS_FILE if cache_dir is not None else None
        answers = None
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text())
            answers = saved["answers"] if saved.get("key") == key else None
        if answers is None:
            answers = self._base_answers(base_model, max_answer_tokens, batch_size, progress)
            if cache is not None:
                write_atomic(cache, json.dumps({"key": key, "answers": answers}))
        self.answer_ids: list[list[int]] = answers

    def __len__(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def _base_answers(self, base, max_new: int, batch_size: int, progress: bool) -> list[list[int]]:
        from tqdm.auto import tqdm

        stops, out = _stop_ids(base), []
        was_training = base.training
        base.eval()
        try:
            for s in tqdm(range(0, len(self.prompts), batch_size), desc="text retention: the base's answers",
                          disable=not progress, leave=False):
                rows = self.prompt_ids[s:s + batch_size]
                ids, mask = self._left_pad(rows)
                gen = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
                for new in gen[:, ids.shape[1]:].tolist():
                    cut = next((j + 1 for j, t in enumerate(new) if t in stops), len(new))
                    out.append(new[:cut])
        finally:
            base.train(was_training)
        return out

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def draw(self, k: int, *, seed: int, step: int, micro: int = 0, process: int = 0) -> list[int]:
        """``k`` prompt rows (without repeats while ``k`` <= the set) for one micro-batch of one step."""
        rng = random.Random(f"text-retention/{seed}/{step}/{micro}/{process}")
        n = len(self.prompts)
        return rng.sample(range(n), k) if k <= n else [rng.randrange(n) for _ in range(k)]

    def batch(self, rows: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs (``input_ids``, ``attention_mask``: prompt + the base's answer, left-padded, no image) and
        labels (the answer tokens; ``-100`` elsewhere) of prompt rows ``rows``."""
        seqs = [self.prompt_ids[r] + self.answer_ids[r] for r in rows]
        ids, mask = self._left_pad(seqs)
        labels = torch.full_like(ids, IGNORE_INDEX)
        width = ids.shape[1]
        for i, r in enumerate(rows):
            a = len(self.answer_ids[r])
            if a:
                labels[i, width - a:] = ids[i, width - a:]
        return {"input_ids": ids, "attention_mask": mask}, labels
