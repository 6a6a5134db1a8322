"""Inference for a deployer: ``safe.pipeline(run_dir)`` and the batched answers of ``safe predict``.

``pipeline`` loads the frozen base and audio encoder, the SAFE (+ policy) checkpoint and its
:class:`~safe.processing.processor.SAFEProcessor`, and answers questions about images and clips. The
checkpoint is ``<run>/checkpoints/policy`` (Stages B/C: SAFE with its deployed gate) when present, else
``<run>/checkpoints/final`` (Stage A), or a checkpoint directory given directly. The base / encoder
paths are read from the processor saved beside the weights (``safe_processor.json``) unless given;
a checkpoint without a processor falls back to the built-in models folder (``$SAFE_CACHE/base``).

Which rows use audio: ``use_audio=True`` / ``False`` decides; otherwise the attached policy decides
(its early or cascade path, :func:`safe.policy.runtime.generate_with_policy`), and without a policy every
row with audio uses it. A row without audio never does, and its answer is the base model's own on the
same batch (SAFE's bypass contract). A batch is one ``generate`` call.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safe.inference.loading import build_formats, load_trained, load_trained_modalities, load_trained_model
from safe.models.backbones import VL_INPUT_KEYS
from safe.models.generation import MAX_NEW_TOKENS
from safe.models.safe_model import CONFIG_NAME
from safe.processing.processor import PROCESSOR_FILE, SAFEProcessor
from safe.processing.prompts import open_image


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The SAFE checkpoint of a run directory (``checkpoints/policy``, else ``checkpoints/final``) or
    ``path`` itself when it is a checkpoint; ``FileNotFoundError`` naming what was looked for."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    for sub in ("policy", "final"):
        if (path / "checkpoints" / sub / CONFIG_NAME).is_file():
            return path / "checkpoints" / sub
    raise FileNotFoundError(f"{path} is neither a SAFE checkpoint ({CONFIG_NAME}) nor a run directory with "
                            "checkpoints/policy or checkpoints/final (train first: safe train / safe policy train)")


class _AvailableRows(nn.Module):
    """The attached policy, restricted to the rows that have audio: a row without a clip is never chosen."""

    def __init__(self, policy: nn.Module, has_audio: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.has_audio, self.spec = policy, has_audio.cpu(), policy.spec

    def decide_with_probability(self, states: torch.Tensor):
        use, prob = self.inner.decide_with_probability(states)
        return use & self.has_audio, prob

    def generate_with(self, model, **kwargs):
        """The inner policy's generate path, with this wrapper attached as ``model.policy`` deciding."""
        return self.inner.generate_with(model, **kwargs)


@contextlib.contextmanager
def _only_rows_with_audio(model, has_audio: torch.Tensor) -> Iterator[None]:
    policy = model.policy
    model.policy = _AvailableRows(policy, has_audio)
    try:
        yield
    finally:
        model.policy = policy


class Pipeline:
    """``p(image=..., question=..., audio=None, use_audio=None, sampling_rate=None, **modalities)``: one
    question -> ``{"answer", "used_audio", "audio_probability", "modalities"}``; lists of questions (images,
    clips, maps alike) -> a list of those, from one ``generate`` for the batch. ``audio_probability`` is the
    policy's P(use audio) for rows with audio when the policy decided, else None. ``modalities``: the
    modalities the row's answer used, in the model's order.

    Each other modality the model carries (``depth``, ...) takes one map per row (``depth=[...]``, ``None``
    for rows without one) and ``use_depth=True / False / None`` (None: every row with a map uses it), and
    its rows carry ``used_depth``. A row that uses no modality is the base model's answer on the same batch.

    A checkpoint whose primary modality is such a map (the depth track's ``checkpoints/policy``) and that
    carries a policy lets that policy decide per row when ``use_depth`` is None: it reads the early state and
    a preview of the map (:func:`~safe.processing.modalities.map_preview`, one cell per encoder patch), a row
    without a map never uses depth, and the rows carry ``depth_probability`` (the policy's P(use depth))."""

    def __init__(self, model, processor: SAFEProcessor, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, int(max_new_tokens)
        policy = model.policy
        if policy is not None and hasattr(policy, "check_deployable"):
            # The policy reads the state parts it was trained on (recorded in its spec): refuse a model that
            # cannot compute one now, and give the processor the preview kind the policy reads.
            policy.check_deployable(model, processor.front_end)
            from safe.policy.preview import policy_preview

            spec, encoder, front = policy.spec, model.audio_encoder, processor.front_end
            processor.preview = lambda waves: policy_preview(spec, waves, encoder, front)

    @property
    def device(self) -> torch.device:
        return next(self.model.base_model.parameters()).device

    @property
    def modalities(self) -> list[str]:
        """The modalities beside audio this pipeline takes inputs for (``depth``, ...)."""
        return [m for m in self.model.modality_names if m != "audio"]

    def _split(self, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        maps = {k: v for k, v in given.items() if not k.startswith("use_")}
        uses = {k[4:]: v for k, v in given.items() if k.startswith("use_")}
        for name in (*maps, *uses):
            if name not in self.modalities:
                raise ValueError(f"{name}: this model has no {name} modality (it has "
                                 f"{', '.join(self.model.modality_names)})")
        return maps, uses

    @torch.no_grad()
    def __call__(self, image: Any = None, question: str | Sequence[str] | None = None, audio: Any = None,
                 use_audio: bool | Sequence[bool] | None = None, sampling_rate: Any = None, **modalities: Any):
        single = isinstance(question, str)
        maps, uses = self._split(modalities)
        has_audio_modality = "audio" in self.model.modality_names
        if not has_audio_modality and (use_audio or (audio is not None and any(
                a is not None for a in (audio if isinstance(audio, (list, tuple)) else [audio])))):
            raise ValueError(f"audio: this model has no audio modality (it has {', '.join(self.model.modality_names)})")
        inputs = self.processor(text=question, images=image, audio=audio, sampling_rate=sampling_rate, **maps)
        n = inputs["input_ids"].shape[0]
        has = inputs["audio_mask"]
        vl = {k: inputs[k].to(self.device) for k in VL_INPUT_KEYS if k in inputs}
        gen = dict(max_new_tokens=self.max_new_tokens, do_sample=False)
        used_by = {}
        for name in self.modalities:  # each other modality: its rows (forced or with a map)
            mask = inputs.get(f"{name}_mask", torch.zeros(n, dtype=torch.bool))
            used_by[name] = self._mask(uses.get(name), mask, n, name)
        extra = self._map_inputs(inputs, used_by)
        prob: list[float | None] = [None] * n
        primary = self.model.primary_modality
        probs: dict[str, list[float | None]] = {}  # side by side: each deciding modality's P(use)
        asked = {"audio": use_audio, **uses}
        in_play = [m for m in self.model.modality_names if bool((has if m == "audio" else used_by[m]).any())]
        deciders = [m for m in in_play if asked.get(m) is None and self.model.policy_of(m) is not None]
        if deciders and (len(in_play) > 1 or deciders != [primary]):
            used = self._decide_side_by_side(vl, inputs, deciders, has, used_by, probs)
            if "audio" not in deciders:
                used = self._mask(use_audio, has, n, "audio")
            extra = self._map_inputs(inputs, used_by)  # the rows each policy chose
            audio = ({"audio_features": inputs["audio_features"].to(self.device), "audio_mask": used.to(self.device)}
                     if bool(used.any()) else {})
            sequences = self.model.generate(**vl, **gen, **extra, **audio)
        elif (primary != "audio" and self.model.policy is not None and uses.get(primary) is None
                and bool(used_by[primary].any())):  # the primary modality alone in the batch: its policy decides
            has_map = used_by[primary]
            feats = extra.pop(f"{primary}_features")
            extra.pop(f"{primary}_mask")
            with _only_rows_with_audio(self.model, has_map):
                out = self.model.generate(**vl, **gen, **{f"{primary}_features": feats},
                                          audio_preview=self._map_preview(primary, feats))
            used_by[primary] = out.used_audio.cpu() & has_map
            prob = [float(p) if h else None for p, h in zip(out.use_probability.tolist(), has_map.tolist())]
            sequences, used = out.sequences, torch.zeros(n, dtype=torch.bool)
        elif (use_audio is None and self.model.policy is not None and has_audio_modality
                and self.model.primary_modality == "audio" and bool(has.any())):  # audio alone in the batch
            with _only_rows_with_audio(self.model, has):
                out = self.model.generate(**vl, **gen, audio_features=inputs["audio_features"].to(self.device),
                                          audio_preview=inputs["audio_preview"])
            sequences, used = out.sequences, out.used_audio.cpu() & has
            prob = [float(p) if h else None for p, h in zip(out.use_probability.tolist(), has.tolist())]
        else:
            used = self._mask(use_audio, has, n, "audio")
            if bool(used.any()):
                sequences = self.model.generate(**vl, **gen, **extra, audio_features=inputs["audio_features"].to(
                    self.device), audio_mask=used.to(self.device))
            else:
                sequences = self.model.generate(**vl, **gen, **extra)
        answers = self.processor.decode(sequences, vl["input_ids"].shape[1])
        rows = []
        for i, (a, u, p) in enumerate(zip(answers, used.tolist(), prob)):
            row = {"answer": a, "used_audio": bool(u), "audio_probability": p if primary == "audio" else None}
            if primary != "audio":
                row[f"{primary}_probability"] = p
            row.update({f"{m}_probability": v[i] for m, v in probs.items()})
            row.update({f"used_{m}": bool(used_by[m][i]) for m in self.modalities})
            row["modalities"] = [m for m in self.model.modality_names
                                 if (bool(u) if m == "audio" else row[f"used_{m}"])]
            rows.append(row)
        return rows[0] if single else rows

    def _map_inputs(self, inputs: dict, used_by: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``<name>_features`` / ``<name>_mask`` of each other modality some row uses, on the model's device."""
        return {k: v for name, rows in used_by.items() if bool(rows.any())
                for k, v in ((f"{name}_features", inputs[f"{name}_features"].to(self.device)),
                             (f"{name}_mask", rows.to(self.device)))}

    def _decide_side_by_side(self, vl: dict, inputs: dict, deciders: list[str], has: torch.Tensor,
                             used_by: dict[str, torch.Tensor], probs: dict) -> torch.Tensor:
        """Each modality of ``deciders`` asks its own policy which of its rows use it (an early-state decision
        from the question, the image and that modality's preview, made before the language model runs: the
        decision its policy makes alone); ``used_by`` and ``probs`` are filled in. Returns the audio rows
        (all False when audio does not decide)."""
        from safe.policy.runtime import decide_rows

        used = torch.zeros_like(has)
        for name in deciders:
            rows = has if name == "audio" else used_by[name]
            preview = (inputs["audio_preview"] if name == "audio"
                       else self._map_preview(name, inputs[f"{name}_features"]))
            use, p = decide_rows(self.model, self.model.policy_of(name), vl, preview, name)
            probs[name] = [float(x) if h else None for x, h in zip(p.tolist(), rows.tolist())]
            if name == "audio":
                used = use & rows
            else:
                used_by[name] = use & rows
        return used

    def _map_preview(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """The policy's preview of an image-like modality: one cell per patch of its encoder, as its policy was
        trained on (:func:`safe.policy.map_modality.patch_preview`)."""
        from safe.policy.map_modality import patch_preview

        return patch_preview(self.model, name, features)

    @staticmethod
    def _mask(use, has: torch.Tensor, n: int, name: str = "audio") -> torch.Tensor:
        if use is None:
            return has.clone()
        want = [bool(use)] * n if isinstance(use, bool) else [bool(u) for u in use]
        if len(want) != n:
            raise ValueError(f"use_{name}: {len(want)} values given for {n} questions")
        missing = [i for i, (w, h) in enumerate(zip(want, has.tolist())) if w and not h]
        if missing:
            raise ValueError(f"use_{name}=True for row(s) {missing}, which have no {name}")
        return torch.tensor(want, dtype=torch.bool)


def checkpoint_modalities(checkpoint: str | os.PathLike) -> list[str]:
    """The modalities a SAFE checkpoint carries beside audio (its primary one when not audio, then those added)."""
    meta = json.loads((Path(checkpoint) / CONFIG_NAME).read_text())
    names = [meta.get("modality", "audio"), *(meta.get("modalities") or {})]
    return [m for m in names if m != "audio"]


def pipeline(run_dir_or_checkpoint: str | os.PathLike, base: str | os.PathLike | None = None,
             audio: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
             max_new_tokens: int = MAX_NEW_TOKENS, load_options: dict | None = None,
             encoders: dict[str, str | os.PathLike] | None = None, **processor_options: Any) -> Pipeline:
    """A :class:`Pipeline` from a run directory or a SAFE checkpoint directory (module docstring).
    ``base`` / ``audio``: the frozen base (built-in models folder or a checkpoint of a supported family) and
    the audio encoder checkpoint, when the processor saved with the checkpoint does not name them.
    ``encoders``: the encoder folder of each other modality the checkpoint carries (``{"depth": DIR}``: a
    transformers vision model with its image processor), when the saved processor does not name it.
    ``processor_options``: ``max_seconds`` / ``long_audio`` instead of the saved length rule.
    ``load_options``: the base's ``attn_implementation`` / ``device_map`` (:func:`~safe.inference.loading.load_frozen`)."""
    ckpt = find_checkpoint(run_dir_or_checkpoint)
    processor = (SAFEProcessor.from_pretrained(ckpt, **processor_options) if (ckpt / PROCESSOR_FILE).is_file()
                 else None)
    if processor is not None:
        base = base or processor.sources.get("base")
        audio = audio or processor.sources.get("audio")
    if base is None:
        from safe.data.source import cache_dir

        base = cache_dir() / "base"
    others = checkpoint_modalities(ckpt)
    if others:  # depth-primary or added modalities: each encoder from its folder, with its image processor
        recorded = processor.sources if processor is not None else {}
        paths = {m: (encoders or {}).get(m) or recorded.get(m) for m in others}
        model, fronts = load_trained_modalities(base, ckpt, audio, paths, dtype=dtype, **(load_options or {}))
        if processor is None:
            fmt, frontend = build_formats(base, model.base_model, audio)
            processor = SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base, audio=audio,
                                                      **processor_options)
        for m in others:  # the processor a checkpoint saved keeps its own front end; the encoder's fills a gap
            processor.modalities.setdefault(m, fronts[m])
            processor.sources[m] = str(Path(paths[m]).resolve())
    elif processor is not None:  # the saved processor is the prompt format and front end: none built twice
        model = load_trained_model(base, ckpt, audio, dtype=dtype, **(load_options or {}))
    else:
        model, fmt, frontend = load_trained(base, ckpt, audio, dtype=dtype, **(load_options or {}))
        processor = SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base, audio=audio,
                                                  **processor_options)
    return Pipeline(model.to(device), processor, max_new_tokens)


# --------------------------------------------------------------------------------------------------
# safe predict
def read_requests(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file: one object per line with ``question`` (required), ``image``,
    ``audio`` (paths, relative ones taken from the file's folder), ``use_audio`` (bool), a map per other
    modality (``depth``: a ``.npy`` or image path, resolved by :func:`predict` against the file's folder,
    ``_dir``), ``use_depth`` (bool) and any ``id`` (echoed). Blank lines are skipped. ``ValueError`` names the file and line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a JSON object ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise ValueError(f"{where}: each line must be a JSON object with a 'question' string")
        if not row["question"].strip():
            raise ValueError(f"{where}: the question is empty")
        for key in [k for k in row if k.startswith("use_")]:
            if row[key] is not None and not isinstance(row[key], bool):
                raise ValueError(f"{where}: {key} must be true, false or null, got {row[key]!r}")
        for key in ("image", "audio"):
            if row.get(key) is not None:
                p = Path(row[key])
                row[key] = str(p if p.is_absolute() else path.parent / p)
        rows.append({**row, "_where": where, "_dir": str(path.parent)})
    if not rows:
        raise ValueError(f"--input {path}: no requests in the file")
    return rows


def predict(source: str | os.PathLike, requests: list[dict[str, Any]], base: str | os.PathLike | None = None,
            audio: str | os.PathLike | None = None, batch_size: int = 16,
            long_audio: str = "truncate", load_options: dict | None = None,
            encoders: dict[str, str | os.PathLike] | None = None) -> list[dict[str, Any]]:
    """Answer ``requests`` (dicts with ``question``, optional ``image`` / ``audio`` paths, ``use_audio``,
    ``id``, ``_where`` for error messages) with the run or checkpoint ``source``, ``batch_size`` rows per
    ``generate`` (rows sharing a ``use_audio`` choice and having an image or not batch together). Every
    input is read and checked before anything runs; errors name the request (``_where``) and the file.
    A request may give a map per other modality the checkpoint carries (``depth``: a ``.npy`` or image path)
    and ``use_depth``; ``encoders``: those modalities' encoder folders (:func:`pipeline`).
    ``long_audio``: clips longer than the encoder's window are cut (``truncate``, logged) or refused."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    p = pipeline(source, base, audio, long_audio=long_audio, load_options=load_options, encoders=encoders)
    names = p.modalities
    prepared, maps = [], []
    for i, r in enumerate(requests):
        where = r.get("_where", f"request {i}")
        maps.append(_read_maps(r, names, where))
        img = None if r.get("image") is None else open_image(r["image"], f"{where}: image {r['image']}",
                                                              p.processor.image_size)
        try:
            clip = None if r.get("audio") is None else p.processor.load_audio(r["audio"])
        except ValueError as err:
            raise type(err)(f"{where}: {err}") from None
        if r.get("use_audio") is True and clip is None:
            raise ValueError(f"{where}: use_audio is true but the request has no audio")
        prepared.append((img, clip))
    out: list[dict[str, Any] | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        key = (r.get("use_audio"), prepared[i][0] is not None, *(r.get(f"use_{m}") for m in names))
        groups.setdefault(key, []).append(i)
    for (use, _, *use_other), idx in groups.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            other = {m: [maps[i][m] for i in chunk] for m in names}
            other.update({f"use_{m}": u for m, u in zip(names, use_other)})
            try:
                res = p(image=[prepared[i][0] for i in chunk], question=[requests[i]["question"] for i in chunk],
                        audio=[prepared[i][1] for i in chunk], use_audio=use, sampling_rate=p.processor.sampling_rate,
                        **other)
            except ValueError as err:  # name the requests by file:line, not by their place in this batch
                names = [requests[i].get("_where", f"request {i}") for i in chunk]
                raise ValueError(f"{names[0] if len(names) == 1 else names[0] + ' .. ' + names[-1]} "
                                 f"(one batch of {len(names)}): {err}") from None
            for i, row in zip(chunk, res):
                out[i] = {**({"id": requests[i]["id"]} if "id" in requests[i] else {}), **row}
    return out  # type: ignore[return-value]


def _read_maps(request: dict[str, Any], names: list[str], where: str) -> dict[str, Any]:
    """Each other modality's map of one request, read and checked now (errors name the request and file)."""
    from safe.processing.modalities import read_map

    for key in request:
        if key.startswith("use_") and key not in ("use_audio", *(f"use_{m}" for m in names)):
            raise ValueError(f"{where}: {key}: this checkpoint has no {key[4:]} modality (it takes use_audio"
                             f"{''.join(f', use_{m}' for m in names)})")
    out = {}
    for m in names:
        value = request.get(m)
        if value is not None:
            value = Path(value)
            value = value if value.is_absolute() or "_dir" not in request else Path(request["_dir"]) / value
            if not value.is_file():
                raise ValueError(f"{where}: {m} {value}: no such file")
            value = read_map(value, f"{where}: {m} {value}")
        if request.get(f"use_{m}") is True and value is None:
            raise ValueError(f"{where}: use_{m} is true but the request has no {m} map")
        out[m] = value
    return out
