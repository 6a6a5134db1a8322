"""The Gemma track's own measurements: what SAFE does to the real, frozen Gemma 3 270M on text it can answer
(:mod:`safe.bench.gemma.track_text`) and on the VL questions, with the gate closed and open, and the language
model's fingerprint.

For each set (the text retention set; the typed VL rows of the speech track's test split, each with its own
unrelated clip) one pass per batch of: the base alone (SAFE's hooks detached), SAFE with the gate closed on
every row (the clip given, no row using it), SAFE with the gate open on every row (an unrelated clip). Reported:

* gate closed: the share of answers identical to the base (must be all), the first answer token's logits
  ``torch.equal`` to the base's on every batch, and the logits of every position ``torch.equal`` on a mixed
  batch (half of its rows open);
* gate open: the share of answers identical to the base, the mean (and largest) KL divergence of the first
  answer token's distribution from the base's, and McNemar's test of the base against SAFE on the rows whose
  right answer is known (the VL questions' answers; the text set's ``gold``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from safe.bench.gemma import lm as gemma_lm
from safe.bench.gemma.track_text import TextPrompt, is_correct
from safe.bench.speech.track import SpeechConfig
from safe.models.generation import MAX_NEW_TOKENS

#: How many changed answers a record keeps as examples.
KEEP_CHANGED = 8


@dataclass(frozen=True)
class GemmaTrackConfig:
    """The sizes of the Gemma track: a speech track sized for a 270M language model on two CPU cores (every
    Stage A step, outcome and evaluation row runs Gemma's 18 layers), and the text retention set."""

    speech: SpeechConfig = field(default_factory=lambda: SpeechConfig(
        n_train=960, n_val=96, n_test=192, n_retention=96, n_ood_test=96))
    """The spoken questions and facts (the speech track's design, fewer rows)."""
    text_prompts: int = 300
    """Prompts of the text retention set."""
    batch_size: int = 16
    """Rows per forward pass of the retention measurements."""
    policy_train_rows: int = 480
    """Rows of train added to val for the policy's outcome table."""
    latency_batches: tuple[int, ...] = (1, 16)
    """Batch sizes of the deployed gate's end-to-end latency."""
    policy: dict[str, Any] = field(default_factory=lambda: {"choose_alpha": True})
    """Further Stages B/C settings (PolicyStageConfig fields). The deployed alpha is chosen on held-out training
    rows (the depth track's rule): at the fixed alpha 0.1 the policy lost 8.3 points to always-audio."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speech"] = self.speech.to_dict()
        d["latency_batches"] = list(self.latency_batches)
        return d

    @classmethod
    def tiny(cls) -> GemmaTrackConfig:
        """A few dozen rows: for tests."""
        return cls(speech=SpeechConfig.tiny(n_train=32, n_test=16), text_prompts=12, batch_size=8,
                   policy_train_rows=32, latency_batches=(4,),
                   policy={"steps": 3, "alphas": [0.0], "alpha": 0.0, "distill_epochs": 2})


def lm_sha256(text_model) -> str:
    """The combined SHA-256 of a Gemma text model's tensors (:func:`safe.bench.gemma.lm.lm_digests`)."""
    return gemma_lm.combined_digest(gemma_lm.lm_digests(text_model))


class _Tensors:
    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict:
        return self.tensors


def saved_lm_sha256(vl_dir: str | Path) -> str:
    """The combined SHA-256 of the Gemma language model's tensors as saved in a LLaVA checkpoint folder (read
    from its safetensors files without building the model), named as :func:`lm_sha256` names them."""
    from safetensors import safe_open

    tensors = {}
    for f in sorted(Path(vl_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                # saved as "language_model.model.<name>" (older layouts: "model.language_model.<name>")
                name = k.split("language_model.", 1)[1] if "language_model." in k else None
                name = name[len("model."):] if name and name.startswith("model.") else name
                if name and not name.startswith("lm_head."):
                    tensors[name] = st.get_tensor(k)
    if not tensors:
        raise FileNotFoundError(f"{vl_dir}: no language model tensors in its safetensors files")
    return gemma_lm.combined_digest(gemma_lm.lm_digests(_Tensors(tensors)))


def _kl(base_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p_other) per row of next-token logits, in float32."""
    lp, lq = F.log_softmax(base_logits.float(), -1), F.log_softmax(other_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)


@torch.no_grad()
def compare_gate(model, batches: Iterable[tuple[dict, torch.Tensor, Sequence[int]]],
                 decode: Callable[[torch.Tensor, int], list[str]], max_new_tokens: int = MAX_NEW_TOKENS,
                 progress: bool = False, total: int | None = None) -> dict[str, Any]:
    """Greedy answers and first-token logits of the base, SAFE gate closed and SAFE gate open on each batch
    (``(inputs, audio embeddings, row ids)``); ``decode(sequences, prompt_len)`` turns generated ids into
    answers. Returns the answers per system, the first-token KL (base -> open) per row, and the closed path's
    bit-exactness checks."""
    from tqdm.auto import tqdm

    model.eval()
    answers: dict[str, list[str]] = {"base": [], "closed": [], "open": []}
    ids: list[int] = []
    kl: list[float] = []
    first_equal, mixed_equal = True, None
    gen = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    for inputs, emb, rows in tqdm(batches, total=total, desc="gate closed / open vs base", disable=not progress,
                                  leave=False):
        n, width = inputs["input_ids"].shape
        with model.hooks_detached() as base:
            out_b = base.generate(**inputs, **gen)
        out_c = model.generate(**inputs, audio_embeddings=emb, audio_mask=torch.zeros(n, dtype=torch.bool), **gen)
        out_o = model.generate(**inputs, audio_embeddings=emb, audio_mask=torch.ones(n, dtype=torch.bool), **gen)
        for name, out in (("base", out_b), ("closed", out_c), ("open", out_o)):
            answers[name].extend(decode(out.sequences, width))
        first_equal &= torch.equal(out_c.logits[0], out_b.logits[0])
        kl.extend(_kl(out_b.logits[0], out_o.logits[0]).tolist())
        ids.extend(rows)
        if mixed_equal is None:  # every position's logits, on a batch whose other rows use audio
            mixed = torch.arange(n) % 2 == 1
            with model.hooks_detached() as base:
                ref = base(**inputs).logits
            got = model(**inputs, audio_embeddings=emb, audio_mask=mixed).logits
            mixed_equal = bool(torch.equal(got[~mixed], ref[~mixed]))
            del ref, got
    return {"answers": answers, "kl": kl, "rows": ids, "first_token_logits_equal": bool(first_equal),
            "mixed_batch_logits_equal": bool(mixed_equal)}


def summarise(cmp: dict[str, Any], correct: Callable[[int, str], bool | None], labels: Sequence[str],
              kinds: Sequence[str]) -> dict[str, Any]:
    """The reported figures of one set from :func:`compare_gate`'s output: ``correct(row, answer)`` scores an
    answer (None when the row has no known answer), ``labels`` name the rows (questions), ``kinds`` group them."""
    from safe.evaluation.stats import mcnemar

    a, rows = cmp["answers"], cmp["rows"]
    n = len(rows)
    closed_same = [x == y for x, y in zip(a["base"], a["closed"])]
    open_same = [x == y for x, y in zip(a["base"], a["open"])]
    out: dict[str, Any] = {
        "n": n,
        "closed_identical": sum(closed_same) / max(1, n), "closed_changed": n - sum(closed_same),
        "closed_first_token_logits_equal": cmp["first_token_logits_equal"],
        "closed_mixed_batch_logits_equal": cmp["mixed_batch_logits_equal"],
        "open_identical": sum(open_same) / max(1, n), "open_changed": n - sum(open_same),
        "open_mean_kl": sum(cmp["kl"]) / max(1, n), "open_max_kl": max(cmp["kl"], default=0.0),
    }
    per: dict[str, dict[str, Any]] = {}
    for i, k in enumerate(kinds):
        p = per.setdefault(k, {"n": 0, "open_changed": 0, "kl": 0.0})
        p["n"] += 1
        p["open_changed"] += not open_same[i]
        p["kl"] += cmp["kl"][i]
    out["per_kind"] = {k: {"n": p["n"], "open_identical": 1 - p["open_changed"] / p["n"], "open_mean_kl": p["kl"] / p["n"]}
                       for k, p in sorted(per.items())}
    scored = [(i, correct(r, a["base"][i]), correct(r, a["open"][i])) for i, r in enumerate(rows)]
    scored = [(i, b, o) for i, b, o in scored if b is not None]
    if scored:
        base_ok, open_ok = [b for _, b, _ in scored], [o for _, _, o in scored]
        out["scored"] = {"n": len(scored), "base_accuracy": sum(base_ok) / len(scored),
                         "open_accuracy": sum(open_ok) / len(scored),
                         "mcnemar": mcnemar(base_ok, open_ok).to_dict()}
    out["changed_examples"] = [{"question": labels[i], "base": a["base"][i], "open": a["open"][i]}
                               for i in range(n) if not open_same[i]][:KEEP_CHANGED]
    return out


def text_batches(tok, prompts: Sequence[TextPrompt], clips, batch_size: int):
    """(inputs, unrelated clip embeddings, row ids) per batch of text-only prompts: left-padded, no image;
    prompt ``i`` hears clip ``i mod len(clips)`` of ``clips`` (a row store of encoder outputs)."""
    n_clips = len(clips)
    for s in range(0, len(prompts), batch_size):
        rows = list(range(s, min(len(prompts), s + batch_size)))
        enc = tok([prompts[i].text for i in rows], return_tensors="pt", padding=True)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        yield inputs, clips[[i % n_clips for i in rows]], rows


def decode_text(tok, stop_ids: Sequence[int]):
    """Generated ids -> answers: the new tokens up to the first stop token, decoded, stripped."""
    stops = set(stop_ids)

    def decode(sequences: torch.Tensor, width: int) -> list[str]:
        out = []
        for row in sequences[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stops), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return out

    return decode


def stop_ids(model) -> list[int]:
    """The ids that end an answer in the base's generation config (Gemma: line break and ``<eos>``)."""
    eos = model.generation_config.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]


def text_retention(model, tok, prompts: Sequence[TextPrompt], clips, batch_size: int = 16,
                   progress: bool = False) -> dict[str, Any]:
    """The text retention set's figures (:func:`summarise`) for ``model`` (a SAFE model over the Gemma base),
    its tokenizer (left padding) and the unrelated clips' encoder outputs ``clips``."""
    tok.padding_side = "left"
    base = model.base_model
    cmp = compare_gate(model, text_batches(tok, prompts, clips, batch_size), decode_text(tok, stop_ids(base)),
                       progress=progress, total=-(-len(prompts) // batch_size))
    out = summarise(cmp, lambda r, ans: is_correct(ans, prompts[r].gold) if prompts[r].gold else None,
                    [p.question for p in prompts], [p.kind for p in prompts])
    out["reference"] = "the base's own greedy answer"
    return out


def vl_batches(prepared, fmt, rows: Sequence[int], batch_size: int):
    """(inputs with pixels, the rows' own (unrelated) clips' encoder outputs, row ids) per batch."""
    for s in range(0, len(rows), batch_size):
        idx = list(rows[s:s + batch_size])
        yield prepared.prompt_inputs(fmt, idx), prepared.audio[idx], idx


def vl_retention(model, fmt, prepared, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """The figures of :func:`summarise` on the rows of ``prepared`` that do not need audio (typed VL questions,
    each with its own unrelated clip), scored against their answers."""
    ex = prepared.examples
    rows = [i for i in range(len(ex)) if not ex[i].needs_audio]
    cmp = compare_gate(model, vl_batches(prepared, fmt, rows, batch_size), fmt.decode, progress=progress,
                       total=-(-len(rows) // batch_size))
    return summarise(cmp, lambda r, ans: ans.strip().lower() in {x.lower() for x in ex[r].answers},
                     [ex[r].question for r in cmp["rows"]], [ex[r].family for r in cmp["rows"]])
