"""One batch of chat requests -> one policy pass and one ``generate`` (:class:`Engine`).

Per batch, which rows use audio: a row whose request says ``"safe": {"use_audio": true|false}`` gets
that; otherwise the run's policy decides among the rows that carry a clip (one forward of the policy
for the batch, :func:`safe.policy.runtime.generate_with_policy`); without a policy every row with a
clip uses it; a row without a clip never does. Another modality (``depth``) is the same with its own
``use_depth`` and its own policy when the model carries one (a composed model: each modality's early-state
policy decides its own rows, :func:`safe.policy.runtime.decide_rows`, then one ``generate``).

**The guarantee, per batch**: a row that does not use audio gets exactly the tokens the frozen base
model generates for that row on the same batch (same rows, same order, same padding) — SAFE's closed
gate is bit-exact (greedy; with sampling, the base's sampling on the same batch and random stream).
Batch composition can change a row's answer only as the base model's own batching does (padding).

Clips: the encoder runs only on rows that use audio and whose clip is not in the
:class:`~safe.serve.clip_cache.ClipCache`; the adapters read the (cached or fresh) encoder outputs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from safe.models.backbones import VL_INPUT_KEYS
from safe.policy.preview import policy_preview
from safe.serve.clip_cache import ClipCache
from safe.serve.media import Row
from safe.serve.schemas import RequestError


@dataclass
class RowResult:
    """What one request gets back from its batch."""

    answers: list[str]
    finish: list[str]
    completion_tokens: list[int]
    prompt_tokens: int
    used_audio: bool
    audio_probability: float | None
    decided_by: str
    cache_hit: bool | None
    used_other: dict[str, bool] = field(default_factory=dict)
    """Whether the row used each other modality the model carries (``depth``, ...)."""
    batch: dict[str, Any] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """The modalities the row's answer used (audio first)."""
        return ["audio"] * self.used_audio + [m for m, u in self.used_other.items() if u]


class _Decided(nn.Module):
    """The attached policy, restricted per row: it chooses only among ``allowed`` rows (a clip and no
    request override); rows in ``forced`` use audio whatever it says. Records when it decided."""

    def __init__(self, policy: nn.Module, allowed: torch.Tensor, forced: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.allowed, self.forced, self.spec = policy, allowed, forced, policy.spec
        self.decided_at: float | None = None

    def decide_with_probability(self, states: torch.Tensor):
        use, prob = self.inner.decide_with_probability(states)
        self.decided_at = time.perf_counter()
        return (use & self.allowed) | self.forced, prob

    def generate_with(self, model, **kwargs):
        return self.inner.generate_with(model, **kwargs)


class Engine:
    """A loaded run (:class:`safe.inference.pipeline.Pipeline`) answering batches of :class:`Row`.

    Guarantees: see the module docstring (per-batch bit-exactness of rows without audio; the encoder
    only on rows that use audio and miss the cache). Not thread-safe: one batch at a time (the batcher
    runs batches on one worker thread)."""

    def __init__(self, pipeline, cache: ClipCache | None = None, metrics=None) -> None:
        self.pipeline, self.metrics = pipeline, metrics
        self.cache = cache if cache is not None else ClipCache(0)  # (an empty cache is falsy: len 0)
        self.model, self.processor = pipeline.model, pipeline.processor
        self.device = pipeline.device
        policy = self.model.policy
        self.policy_kind = None if policy is None else getattr(policy, "kind", type(policy).__name__)
        self.policy_state = None if policy is None else ("early" if policy.spec.early else "cascade")
        tok = self.processor.tokenizer
        self.eos, self.pad = tok.eos_token_id, tok.pad_token_id
        self.batches = 0
        self.positions = base_positions(self.model.base_model)
        # Tokenizers are not safe to call from several threads at once (request threads count prompts
        # while the batch thread prepares its inputs): one lock around every processor call.
        self._processor_lock = threading.Lock()

    def prompt_tokens(self, row: Row) -> int:
        """How many tokens the model's prompt for ``row`` holds (question, template, image tokens)."""
        with self._processor_lock:
            inputs = self.processor(text=[row.question], images=None if row.image is None else [row.image])
        return int(inputs["input_ids"].shape[1])

    # ----------------------------------------------------------------------------------------------
    def check(self, row: Row) -> None:
        """Refuse a row this model cannot answer, before it joins a batch (:class:`RequestError`)."""
        if row.n > 1 and row.temperature > 0 and self.policy_state == "cascade" and row.use_audio is None \
                and row.wave is not None:
            raise RequestError("n > 1 with sampling is not supported when this run's cascade policy decides; "
                               "send n: 1, or safe.use_audio true/false", param="n", code="unsupported_parameter")
        for name, where in row.where.items():
            self._check_map(name, row.maps[name], where)
        if self.policy_state == "cascade" and row.wave is not None and row.use_audio is None \
                and any(row.use.get(m) is not False for m in row.maps):
            raise RequestError("safe.use_audio: this run's cascade policy decides audio only inside its own pass, "
                               f"not together with {', '.join(row.maps)}; send safe.use_audio true/false with an "
                               f"input_{next(iter(row.maps))} part", param="safe.use_audio",
                               code="unsupported_parameter")
        if row.wave is not None and "audio" not in self.model.modality_names:
            raise RequestError(f"messages[0].content: this model has no audio modality (it has "
                               f"{', '.join(self.model.modality_names)}); send no input_audio part",
                               param="messages[0].content", code="unsupported_modality")
        fmt = self.processor.prompt_format
        if row.image is None and self.processor.kind == "checkpoint" and fmt.arch.startswith("blip2"):
            raise RequestError("messages[0].content: this BLIP-2 model needs an image_url part", param="messages",
                               code="missing_image")

    def _check_map(self, name: str, value, where: str) -> None:
        """Refuse (400 naming the part) a map this model has no modality for, or one its encoder cannot read:
        the image processor must take it and give the encoder's input size (checked on this map alone, so a
        bad map never fails its batch-mates)."""
        if name not in self.pipeline.modalities:
            raise RequestError(f"{where}: this model has no {name} modality (it has "
                               f"{', '.join(self.model.modality_names)})", param=where, code="unsupported_modality")
        try:
            with self._processor_lock:
                pixels = self.processor.modalities[name]([value], where)
        except (ValueError, TypeError) as err:
            raise RequestError(f"{where}: the {name} encoder's image processor cannot read this map ({err})",
                               param=f"{where}.data", code="invalid_map") from None
        config = getattr(getattr(self.model.modality(name).encoder, "model", None), "config", None)
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        want = (channels, *((size, size) if isinstance(size, int) else size)) if size and channels else None
        if want is not None and tuple(pixels.shape[1:]) != tuple(want):
            c, h, w = pixels.shape[1:]
            raise RequestError(f"{where}: the {name} encoder reads {want[1]}x{want[2]} maps of {want[0]} channel(s); "
                               f"this one gives {h}x{w} of {c} after its image processor", param=f"{where}.data",
                               code="invalid_map")

    def _embed(self, waves: list, keys: list, timing: dict, hits: dict):
        """``rows -> encoder outputs of those rows`` (on the model's device), from the cache or the encoder."""

        def embed(rows: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            idx = [int(r) for r in rows.tolist()]
            got: dict[int, torch.Tensor] = {}
            missing = []
            for i in idx:
                t = self.cache.get(keys[i])
                hits[i] = t is not None
                if t is None:
                    missing.append(i)
                else:
                    got[i] = t
            if missing:
                feats = torch.as_tensor(self.processor.front_end([waves[i] for i in missing]))
                out = self.model.audio_encoder.encode(feats)  # moves to the encoder's device and dtype
                self.model.audio_encoder_calls += len(missing)
                for j, i in enumerate(missing):
                    got[i] = out[j]
                    self.cache.put(keys[i], out[j])
                if self.metrics is not None:
                    self.metrics.encoder_rows.inc(len(missing))
            if self.metrics is not None:
                self.metrics.cache_hits.inc(len(idx) - len(missing))
                self.metrics.cache_misses.inc(len(missing))
                self.metrics.cache_size.set(len(self.cache))
                self.metrics.cache_bytes.set(self.cache.bytes)
            timing["encoder"] = timing.get("encoder", 0.0) + time.perf_counter() - t0
            return torch.stack([got[i].to(self.device) for i in idx])

        return embed

    @torch.no_grad()
    def run(self, rows: list[Row]) -> list[RowResult]:
        """Answer ``rows`` (all with the same :attr:`Row.key`) in one batch."""
        if len({r.key for r in rows}) != 1:
            raise ValueError("a batch mixes generation settings; the batcher groups rows by Row.key")
        t_start = time.perf_counter()
        first, n, model = rows[0], len(rows), self.model
        names = sorted({name for r in rows for name in r.maps})
        with self._processor_lock:
            inputs = self.processor(text=[r.question for r in rows], images=[r.image for r in rows],
                                    **{m: [r.maps.get(m) for r in rows] for m in names})
        vl = {k: inputs[k].to(self.device) for k in VL_INPUT_KEYS if k in inputs}  # every processor input
        other, extra = {}, {}  # each other modality: the rows that use it (a map, not turned off) and its inputs
        map_free = {}  # rows with a map and no request choice, where the modality's own policy decides
        for m in names:
            other[m] = inputs[f"{m}_mask"] & torch.tensor([r.use.get(m) is not False for r in rows])
            if self.model.policy_of(m) is not None:
                map_free[m] = inputs[f"{m}_mask"] & torch.tensor([r.use.get(m) is None for r in rows])
                other[m] = other[m] & ~map_free[m]
            if bool(other[m].any()):
                extra.update({f"{m}_features": inputs[f"{m}_features"].to(self.device),
                              f"{m}_mask": other[m].to(self.device)})
        gen: dict[str, Any] = dict(max_new_tokens=first.max_tokens, do_sample=first.temperature > 0)
        r = 1
        if first.temperature > 0:
            gen.update(temperature=first.temperature, top_p=first.top_p or 1.0)
            if first.n > 1:
                r = first.n
                gen["num_return_sequences"] = r
        has = torch.tensor([row.wave is not None for row in rows])
        over = [row.use_audio for row in rows]
        forced = torch.tensor([u is True for u in over]) & has
        free = has & torch.tensor([u is None for u in over])
        waves = [row.wave for row in rows]
        keys = [row.clip_key for row in rows]
        timing: dict[str, float] = {}
        hits: dict[int, bool] = {}
        embed = self._embed(waves, keys, timing, hits)
        prob = [None] * n
        t_gen = time.perf_counter()
        timing["prepare"] = t_gen - t_start
        if map_free or (model.policy is not None and bool(free.any()) and extra):  # each modality's own policy
            used, prob = self._side_by_side(vl, inputs, waves, has, free, forced, map_free, other)
            timing["state"] = time.perf_counter() - t_gen
            for m in other:
                extra.pop(f"{m}_features", None)
                extra.pop(f"{m}_mask", None)
                if bool(other[m].any()):
                    extra[f"{m}_features"] = inputs[f"{m}_features"].to(self.device)
                    extra[f"{m}_mask"] = other[m].to(self.device)
            sequences = self._generate_masked(vl, gen, extra, embed, used)
            decided = ["policy" if f and model.policy is not None else "default" if f else None for f in free.tolist()]
        elif model.policy is not None and bool(free.any()) and not extra:  # (Row.key keeps maps out of such batches)
            # the preview part the policy was trained on (statistics, the encoder's preview embedding, none)
            got = policy_preview(model.policy.spec, [w for w in waves if w is not None], model.audio_encoder,
                                 self.processor.front_end)
            preview = got.new_zeros((n, *got.shape[1:]))
            preview[has] = got
            decider = _Decided(model.policy, free, forced)
            policy, model.policy = model.policy, decider
            try:
                out = model.generate(**vl, **gen, audio_embeddings=embed, audio_preview=preview)
            finally:
                model.policy = policy
            sequences, used = out.sequences, out.used_audio.cpu() & has
            prob = [float(p) if f else None for p, f in zip(out.use_probability.tolist(), free.tolist())]
            timing["state"] = (decider.decided_at or t_gen) - t_gen
            decided = ["policy" if f else None for f in free.tolist()]
        else:
            used = forced | (free if model.policy is None else torch.zeros_like(free))
            sequences = self._generate_masked(vl, gen, extra, embed, used)
            timing["state"] = 0.0
            decided = ["default" if f else None for f in free.tolist()]
        t_end = time.perf_counter()
        timing["generate"] = max(0.0, t_end - t_gen - timing["state"] - timing.get("encoder", 0.0))
        timing.setdefault("encoder", 0.0)
        self.batches += 1
        if self.metrics is not None:
            for stage in ("state", "encoder", "generate"):
                self.metrics.stage.labels(stage).observe(timing[stage])
            self.metrics.batch_size.observe(n)
            self.metrics.count_rows(used.tolist(), has.tolist())
        prompt_len = vl["input_ids"].shape[1]
        with self._processor_lock:
            answers = self.processor.decode(sequences, prompt_len)
        new = sequences[:, prompt_len:].cpu()
        out_rows = []
        for i, row in enumerate(rows):
            span = range(i * r, (i + 1) * r)
            counts, finish = zip(*(self._finish(new[j], row.max_tokens) for j in span))
            texts = [answers[j] for j in span]
            if r == 1 and row.n > 1:  # greedy: every choice is the same answer
                texts, counts, finish = texts * row.n, counts * row.n, finish * row.n
            how = ("request" if over[i] is not None else decided[i]) if has[i] else "no_audio"
            out_rows.append(RowResult(
                answers=texts, finish=list(finish), completion_tokens=list(counts),
                prompt_tokens=int(vl["attention_mask"][i].sum()), used_audio=bool(used[i]),
                audio_probability=prob[i], decided_by=how, cache_hit=hits.get(i) if bool(used[i]) else None,
                used_other={m: bool(other[m][i]) if m in other else False for m in self.pipeline.modalities},
                batch={"size": n, "row": i, "policy": self.policy_kind, "policy_state": self.policy_state},
                timing_ms={k: round(v * 1000, 3) for k, v in timing.items()}))
        return out_rows

    def _generate_masked(self, vl: dict, gen: dict, extra: dict, embed, used: torch.Tensor) -> torch.Tensor:
        """One ``generate`` with audio in the ``used`` rows (their encoder outputs through ``embed``, the others
        zeros, unread) and the other modalities' inputs in ``extra``."""
        if not bool(used.any()):
            return self.model.generate(**vl, **gen, **extra)
        picked = embed(used.nonzero().squeeze(1))
        full = picked.new_zeros((len(used), *picked.shape[1:]))
        full[used.to(full.device)] = picked
        return self.model.generate(**vl, **gen, **extra, audio_embeddings=full, audio_mask=used.to(self.device))

    def _side_by_side(self, vl, inputs, waves, has, free, forced, map_free, other) -> tuple[torch.Tensor, list]:
        """Each modality's own policy picks its rows among those it may decide (``free`` audio rows, ``map_free``
        map rows), from the early state and its own preview, before the language model runs; ``other`` gets
        each map modality's chosen rows added. Returns (audio rows used, audio P(use) per row)."""
        from safe.policy.map_modality import patch_preview
        from safe.policy.runtime import decide_rows

        model, n = self.model, len(waves)
        used, prob = forced.clone(), [None] * n
        if model.policy is not None and bool(free.any()):
            got = policy_preview(model.policy.spec, [w for w in waves if w is not None], model.audio_encoder,
                                 self.processor.front_end)
            preview = got.new_zeros((n, *got.shape[1:]))
            preview[has] = got
            use, p = decide_rows(model, model.policy, vl, preview)
            used = used | (use & free)
            prob = [float(x) if f else None for x, f in zip(p.tolist(), free.tolist())]
        elif model.policy is None:
            used = used | free
        for m, rows in map_free.items():
            use, _ = decide_rows(model, model.policy_of(m), vl, patch_preview(model, m, inputs[f"{m}_features"]), m)
            other[m] = other[m] | (use & rows)
        return used, prob

    def _finish(self, tokens: torch.Tensor, max_tokens: int) -> tuple[int, str]:
        ids = tokens.tolist()
        if self.eos is not None and self.eos in ids:
            return ids.index(self.eos), "stop"
        while ids and self.pad is not None and ids[-1] == self.pad:  # rows padded to a longer row's length
            ids.pop()
        return len(ids), ("length" if len(ids) >= max_tokens else "stop")


def base_positions(base_model) -> int | None:
    """The most positions the base's language model takes (``max_position_embeddings`` of its text
    config), or None when the config does not say."""
    config = getattr(base_model, "config", None)
    for c in (getattr(config, name, None) for name in ("text_config", "llm_config", "language_config")):
        if c is not None and isinstance(getattr(c, "max_position_embeddings", None), int):
            return int(c.max_position_embeddings)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


__all__ = ["Engine", "RowResult", "base_positions"]
