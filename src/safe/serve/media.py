"""A validated :class:`~safe.serve.schemas.ChatRequest` -> one model row (:class:`Row`): the question,
a decoded image, a decoded clip at the encoder's rate, and the generation settings; or a
:class:`~safe.serve.schemas.RequestError` naming the part that is wrong.

Images come as ``data:`` URLs (base64); a local path or ``file://`` URL only when the server runs with
``--allow-local-media``; remote URLs are never fetched. Audio comes as ``input_audio`` parts (base64
bytes of a WAV / FLAC / OGG / MP3 file), decoded by :func:`safe.processing.audio.load_audio` (any PCM
width, stereo downmixed, resampled with soxr). A clip over the server's limit is refused; a clip within
the limit but over the encoder's window is cut to the window (the processor's rule). Maps of other
modalities come as ``input_depth`` (...) parts: base64 ``.npy`` or PNG bytes (:func:`decode_map`), under the
image side limits.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from safe.processing.audio import MAX_CHANNELS, MAX_PEAK, AudioInputError, AudioTooLongError, load_audio
from safe.processing.images import MAX_SIDE, SERVE_FORMATS, ImageInputError, ImageTooLargeError, read_image
from safe.serve.schemas import MAP_PARTS, AudioPart, ChatRequest, ImagePart, RequestError, TextPart

AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3")
MAP_FORMATS = ("npy", "png")
MAX_MAP_CHANNELS = 4
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


#: Sampling below this temperature divides the logits into inf / NaN; 0 is greedy.
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class Limits:
    """What one request may carry: the server's flags (``safe serve``'s options hold their defaults, written
    once there; docs/serve.md lists each), and the parts per message."""

    max_tokens: int
    max_n: int
    max_audio_seconds: float
    window_seconds: float | None
    allow_local_media: bool
    default_max_tokens: int
    max_images: int = 1
    max_clips: int = 1
    max_messages: int = 8
    max_parts: int = 16
    max_prompt_tokens: int | None = None
    positions: int | None = None
    max_image_width: int = MAX_SIDE
    max_image_height: int = MAX_SIDE
    max_audio_peak: float = MAX_PEAK
    max_audio_channels: int = MAX_CHANNELS


@dataclass
class Row:
    """One request, ready for a batch. ``key``: requests sharing it can share one ``generate``."""

    question: str
    image: Image.Image | None
    wave: np.ndarray | None
    clip_key: str | None
    use_audio: bool | None
    max_tokens: int
    temperature: float
    top_p: float | None
    n: int
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """Each other modality's map (``depth``: ``(H, W, C)`` numbers), by modality name."""
    use: dict[str, bool | None] = field(default_factory=dict)
    """``safe.use_<name>`` of each other modality the request set."""
    where: dict[str, str] = field(default_factory=dict)
    """The content part each map came from (``messages[0].content[2]``), for errors."""

    @property
    def key(self) -> tuple:
        # Image presence too: in a batch with images, a text-only row would get the processor's stand-in
        # image (and its image tokens), so its answer would depend on its batch-mates. Rows with maps batch
        # apart: the policy chooses audio rows only, so a batch it decides in carries no other modality.
        return (self.image is not None, self.max_tokens, self.temperature, self.top_p, self.n,
                tuple(sorted(self.maps)))


def _b64(data: str, where: str) -> bytes:
    try:
        out = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{where}: not valid base64 ({err})", param=where, code="invalid_base64") from None
    if not out:
        raise RequestError(f"{where}: empty data", param=where, code="invalid_base64")
    return out


def decode_image(url: str, where: str, limits: Limits) -> Image.Image:
    """A ``data:`` URL (or, with ``limits.allow_local_media``, a local path / ``file://`` URL) -> an RGB
    image, its size judged from the header before decoding (:func:`safe.processing.images.read_image`:
    PNG, JPEG, WebP and GIF only)."""
    m = _DATA_URL.match(url)
    if m:
        if not m.group("b64"):
            raise RequestError(f"{where}: a data: URL must be base64 (data:image/png;base64,...)", param=where,
                               code="invalid_image")
        source: Any = io.BytesIO(_b64(url[m.end():], where))
    elif re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I) and not url.lower().startswith("file://"):
        raise RequestError(f"{where}: remote image URLs are not fetched; send the image as a data: URL",
                           param=where, code="invalid_image")
    elif not limits.allow_local_media:
        raise RequestError(f"{where}: {url[:60]!r} is not a data: URL; local files are read only when the server "
                           "runs with --allow-local-media", param=where, code="local_media_disabled")
    else:
        path = Path(url[7:] if url.lower().startswith("file://") else url)
        if not path.is_file():
            raise RequestError(f"{where}: no such file {str(path)!r}", param=where, code="invalid_image")
        source = path
    try:
        return read_image(source, where, max_width=limits.max_image_width, max_height=limits.max_image_height,
                          formats=SERVE_FORMATS)
    except ImageTooLargeError as err:
        raise RequestError(f"{err} (--max-image-width / --max-image-height)", param=where,
                           code="image_too_large") from None
    except ImageInputError as err:
        raise RequestError(str(err), param=where, code="invalid_image") from None


def decode_audio(part: AudioPart, where: str, rate: int, limits: Limits) -> np.ndarray:
    """An ``input_audio`` part -> mono float32 at ``rate``, cut to the encoder's window; refused over
    ``limits.max_audio_seconds``."""
    fmt = part.input_audio.format.lower()
    if fmt not in AUDIO_FORMATS:
        raise RequestError(f"{where}.format: {part.input_audio.format!r} is not supported; use one of {AUDIO_FORMATS}",
                           param=f"{where}.format", code="invalid_audio")
    raw = _b64(part.input_audio.data, f"{where}.data")
    try:  # the limit is checked on the header (frames / rate), before a sample is decoded or resampled
        wave = load_audio(raw, None, rate, f"{where} ({fmt})", max_seconds=limits.max_audio_seconds,
                          long_audio="error", max_peak=limits.max_audio_peak,
                          max_channels=limits.max_audio_channels)
    except AudioTooLongError as err:
        raise RequestError(f"{where}: {err.seconds:.2f} s of audio is longer than this server's limit of "
                           f"{limits.max_audio_seconds:g} s (--max-audio-seconds)", param=where,
                           code="audio_too_long") from None
    except AudioInputError as err:
        raise RequestError(str(err), param=f"{where}.data", code="invalid_audio") from None
    if limits.window_seconds is not None:  # the processor's truncate rule: the encoder reads its window only
        wave = wave[: int(math.ceil(limits.window_seconds * rate))]
    return np.ascontiguousarray(wave, dtype=np.float32)


def decode_map(data: str, fmt: str, where: str, limits: Limits) -> np.ndarray:
    """An ``input_<modality>`` part's base64 ``.npy`` (numbers, 2-D or ``(H, W, C)``, no pickled objects) or PNG
    (any bit depth; 16-bit grey kept as it is) -> an ``(H, W, C)`` array, refused (its size read from the
    header, before the data) over the image side limits or :data:`MAX_MAP_CHANNELS` channels."""
    if fmt.lower() not in MAP_FORMATS:
        raise RequestError(f"{where}.format: {fmt!r} is not supported; use one of {MAP_FORMATS}",
                           param=f"{where}.format", code="invalid_map")
    raw = io.BytesIO(_b64(data, f"{where}.data"))
    try:
        if fmt.lower() == "npy":
            version = np.lib.format.read_magic(raw)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
            shape, _, dtype = read[version](raw)  # the header only: no data is read or allocated yet
            raw.seek(0)
        else:
            im = Image.open(raw, formats=("PNG",))
            shape, dtype = (im.size[1], im.size[0], len(im.getbands())), np.dtype(np.uint16)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise RequestError(f"{where}.data: not a {fmt} file ({err})", param=f"{where}.data",
                           code="invalid_map") from None
    if dtype.kind not in "iuf" or len(shape) not in (2, 3) or 0 in shape:
        raise RequestError(f"{where}.data: expected a 2-D map or an (H, W, C) array of numbers, got {dtype} of "
                           f"shape {tuple(shape)}", param=f"{where}.data", code="invalid_map")
    if shape[0] > limits.max_image_height or shape[1] > limits.max_image_width \
            or (len(shape) == 3 and shape[2] > MAX_MAP_CHANNELS):
        raise RequestError(f"{where}: a {shape[1]}x{shape[0]} map{f' of {shape[2]} channels' if len(shape) == 3 else ''}"
                           f" is larger than the {limits.max_image_width}x{limits.max_image_height} (at most "
                           f"{MAX_MAP_CHANNELS} channels) read here (--max-image-width / --max-image-height)",
                           param=where, code="map_too_large")
    try:
        arr = np.load(raw, allow_pickle=False) if fmt.lower() == "npy" else np.asarray(im)
    except (ValueError, OSError, EOFError) as err:
        raise RequestError(f"{where}.data: cannot read the {fmt} data ({err})", param=f"{where}.data",
                           code="invalid_map") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RequestError(f"{where}.data: the map holds NaN or infinite values", param=f"{where}.data",
                           code="invalid_map")
    return np.ascontiguousarray(arr[..., None] if arr.ndim == 2 else arr)


def clip_key(wave: np.ndarray) -> str:
    """SHA-256 of the decoded clip (shape + float32 samples at the encoder's rate): the same sound sent
    as WAV or FLAC, or by two clients, shares one key."""
    h = hashlib.sha256(repr(tuple(wave.shape)).encode())
    h.update(np.ascontiguousarray(wave, dtype=np.float32).tobytes())
    return h.hexdigest()


def to_row(req: ChatRequest, rate: int, limits: Limits, decodes: threading.Semaphore | None = None) -> Row:
    """Check ``req`` against SAFE's prompt (one user turn) and ``limits``, and decode its media (holding
    ``decodes``, when given, while decoding: it bounds the decodes running at once)."""
    roles = [m.role for m in req.messages]
    if roles.count("user") != 1 or roles[-1] != "user" or len(roles) != 1:
        shown = ", ".join(roles[:4]) + (f", ... ({len(roles)} in all)" if len(roles) > 4 else "")
        raise RequestError(f"messages: SAFE's prompt is one user turn; send exactly one message with role 'user' "
                           f"(got roles [{shown}])", param="messages", code="unsupported_messages")
    content = req.messages[0].content
    where = "messages[0].content"
    if content is None or (isinstance(content, str) and not content.strip()):
        raise RequestError(f"{where}: the user message has no text", param=where, code="missing_text")
    texts, images, clips = [], [], []
    maps: dict[str, list] = {name: [] for name in MAP_PARTS}
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else content
    for i, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            images.append((i, part))
        elif isinstance(part, AudioPart):
            clips.append((i, part))
        else:
            maps[part.type.removeprefix("input_")].append((i, part))
    question = " ".join(t.strip() for t in texts if t.strip())
    if not question:
        raise RequestError(f"{where}: no text part with the question", param=where, code="missing_text")
    for what, got, most in (("image", images, limits.max_images), ("audio clip", clips, limits.max_clips)):
        if len(got) > most:
            raise RequestError(f"{where}: {len(got)} {what}s in one request; this model takes at most {most}",
                               param=where, code="too_many_parts")
    for name, got in maps.items():
        if len(got) > 1:
            raise RequestError(f"{where}: {len(got)} input_{name} parts in one request; this model takes at most 1",
                               param=where, code="too_many_parts")
    use = req.safe.use_audio if req.safe is not None else None
    if use is True and not clips:
        raise RequestError("safe.use_audio is true but the request has no input_audio part", param="safe.use_audio",
                           code="missing_audio")
    use_other = {name: getattr(req.safe, f"use_{name}") for name in MAP_PARTS if req.safe is not None}
    for name, u in use_other.items():
        if u is True and not maps[name]:
            raise RequestError(f"safe.use_{name} is true but the request has no input_{name} part",
                               param=f"safe.use_{name}", code=f"missing_{name}")
    max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise RequestError(f"max_tokens ({req.max_tokens}) and max_completion_tokens ({req.max_completion_tokens}) "
                           "disagree; send one of them", param="max_completion_tokens", code="invalid_field")
    if max_tokens > limits.max_tokens:
        raise RequestError(f"max_tokens: {max_tokens} is over this server's limit of {limits.max_tokens} "
                           "(--max-tokens)", param="max_tokens", code="invalid_field")
    if req.n > limits.max_n:
        raise RequestError(f"n: {req.n} is over this server's limit of {limits.max_n} (--max-n)", param="n",
                           code="invalid_field")
    temperature = float(req.temperature or 0.0)
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise RequestError(f"temperature: {req.temperature!r} is too small to sample with (the logits would "
                           f"overflow); send 0 for greedy decoding or at least {MIN_TEMPERATURE}",
                           param="temperature", code="invalid_field")
    if req.top_p is not None and temperature == 0.0 and req.top_p != 1:
        raise RequestError("top_p needs sampling (temperature > 0); greedy decoding ignores it", param="top_p",
                           code="invalid_field")
    top_p = float(req.top_p) if req.top_p is not None and temperature > 0 else None
    with decodes if decodes is not None else contextlib.nullcontext():  # media last: the costly part
        image = (decode_image(images[0][1].image_url.url, f"{where}[{images[0][0]}].image_url.url", limits)
                 if images else None)
        wave = decode_audio(clips[0][1], f"{where}[{clips[0][0]}].input_audio", rate, limits) if clips else None
        arrays, wheres = {}, {}
        for name, got in maps.items():
            if got:
                i, part = got[0]
                wheres[name] = f"{where}[{i}].input_{name}"
                m = getattr(part, f"input_{name}")
                arrays[name] = decode_map(m.data, m.format, wheres[name], limits)
    return Row(question, image, wave, None if wave is None else clip_key(wave), use, int(max_tokens), temperature,
               top_p, int(req.n), arrays, {k: v for k, v in use_other.items() if v is not None}, wheres)


__all__ = ["AUDIO_FORMATS", "MAP_FORMATS", "MIN_TEMPERATURE", "Limits", "Row", "clip_key", "decode_audio", "decode_image",
           "decode_map", "to_row"]
