"""Audio captioning and classification: AudioCaps, Clotho and VGGSound, in their published CSV layouts."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe.data.readers._common import (
    CAPTION_PROMPT,
    VGGSOUND_PROMPT,
    ReadResult,
    _as_int,
    _cell,
    _check_template,
    _Collector,
    _load_csv,
    _Media,
    _require_dir,
    _RowError,
    _run_rows,
    _where,
    inside,
)
from safe.data.readers.maps import MapColumn, RowMaps
from safe.data.records import Example

# --------------------------------------------------------------------------- AudioCaps


def read_audiocaps(
    captions_csv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    audio_name: str = "{youtube_id}_{start_time}.wav",
    frames_dir: str | os.PathLike[str] | None = None,
    modalities: Mapping[str, MapColumn] | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read AudioCaps (``train.csv`` / ``val.csv`` / ``test.csv``), one caption record per row.

    Expected layout::

        <split>.csv                    header: audiocap_id,youtube_id,start_time,caption
        <audio_dir>/<audio_name>       default "{youtube_id}_{start_time}.wav", e.g. "--0w1YA1Hm4_30.wav"
        <frames_dir>/<stem>.jpg        optional key frame (stem = audio file name without ".wav"),
        or <frames_dir>/<stem>/*.jpg   first in sorted order

    AudioCaps publishes only YouTube ids, so the clip file name depends on the download tool:
    ``audio_name`` is a ``str.format`` template over ``audiocap_id`` (str), ``youtube_id`` (str) and
    ``start_time`` (int), e.g. ``"{audiocap_id}.wav"`` or ``"{youtube_id}_{start_time:06d}.wav"``.

    Each row -> question ``"Describe the sound."``, ``answers=(caption,)``, ``family="caption"``,
    ``needs_audio=True``, ``id`` = ``audiocap_id``; ``image`` is None without ``frames_dir``. The
    test split has five rows (captions) per clip: group them by ``meta["youtube_id"]`` and
    ``meta["start_time"]`` for multi-reference scoring.
    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    """
    _check_template(audio_name, {"audiocap_id": "0", "youtube_id": "x", "start_time": 0}, "audio_name")
    maps = RowMaps(modalities)
    cfile, rows = _load_csv(captions_csv, header=True, required=("audiocap_id", "youtube_id", "start_time", "caption",
                                                                  *maps.csv_columns()))
    adir = _require_dir(audio_dir, "AudioCaps audio_dir")
    fdir = _require_dir(frames_dir, "AudioCaps frames_dir") if frames_dir is not None else None
    media = _Media(verify_media)
    col = _Collector(cfile, skip_bad)

    def build(row: dict[str | None, Any]) -> Example:
        if row.get(None):
            raise _RowError(f"too many fields (extra: {row[None]!r}); is a caption comma not quoted?")
        cap_id = _cell(row, "audiocap_id")
        ytid = _cell(row, "youtube_id")
        start = _as_int(_cell(row, "start_time"), "start_time")
        caption = _cell(row, "caption")
        fname = audio_name.format(audiocap_id=cap_id, youtube_id=ytid, start_time=start)
        audio = media.audio(inside(adir, fname))
        image = media.frame(fdir, Path(fname).stem) if fdir is not None else None
        return Example(
            id=cap_id, task="audiocaps", family="caption", question=CAPTION_PROMPT, answers=(caption,),
            image=image, audio=audio, needs_audio=True,
            meta={"audiocap_id": cap_id, "youtube_id": ytid, "start_time": start},
        )

    return _run_rows(col, ((_where(i, r.get("audiocap_id"), line), r) for i, (line, r) in enumerate(rows)), build, maps)


# --------------------------------------------------------------------------- Clotho

CLOTHO_CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, 6))


def read_clotho(
    captions_csv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    modalities: Mapping[str, MapColumn] | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read Clotho (``clotho_captions_<split>.csv``), one record per audio file with its 5 captions.

    Expected layout::

        clotho_captions_<split>.csv    header: file_name,caption_1,caption_2,caption_3,caption_4,caption_5
        <audio_dir>/<file_name>        the published WAV files (e.g. clotho_audio_<split>/)

    Question ``"Describe the sound."``; ``answers`` = the five captions in column order (all five
    must be non-empty); ``family="caption"``; ``needs_audio=True``; ``image=None`` (Clotho has no
    video); ``id`` = ``file_name``.
    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    """
    maps = RowMaps(modalities)
    cfile, rows = _load_csv(captions_csv, header=True, required=("file_name", *CLOTHO_CAPTION_COLUMNS,
                                                                  *maps.csv_columns()))
    adir = _require_dir(audio_dir, "Clotho audio_dir")
    media = _Media(verify_media)
    col = _Collector(cfile, skip_bad)

    def build(row: dict[str | None, Any]) -> Example:
        if row.get(None):
            raise _RowError(f"too many fields (extra: {row[None]!r}); is a caption comma not quoted?")
        name = _cell(row, "file_name")
        captions = tuple(_cell(row, c) for c in CLOTHO_CAPTION_COLUMNS)
        audio = media.audio(inside(adir, name))
        return Example(
            id=name, task="clotho", family="caption", question=CAPTION_PROMPT, answers=captions,
            image=None, audio=audio, needs_audio=True, meta={"file_name": name},
        )

    return _run_rows(col, ((_where(i, r.get("file_name"), line), r) for i, (line, r) in enumerate(rows)), build, maps)


# --------------------------------------------------------------------------- VGGSound


def read_vggsound(
    csv_path: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str | None = None,
    audio_name: str = "{youtube_id}_{start_seconds:06d}.wav",
    frames_dir: str | os.PathLike[str] | None = None,
    questions: str = "label",
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read VGGSound (``vggsound.csv``): per clip, a classification record, or presence questions.

    Expected layout::

        vggsound.csv                   no header; columns: youtube_id,start_seconds,label,split
                                       e.g. ---g-f_I2yQ,1,people marching,test
        <audio_dir>/<audio_name>       default "{youtube_id}_{start_seconds:06d}.wav",
                                       e.g. "---g-f_I2yQ_000001.wav"
        <frames_dir>/<stem>.jpg        optional key frame (stem = audio file name without ".wav"),
        or <frames_dir>/<stem>/*.jpg   first in sorted order

    ``audio_name`` is a ``str.format`` template over ``youtube_id`` (str) and ``start_seconds``
    (int). ``split`` (``"train"`` / ``"test"``) keeps only that split's rows; a value that appears
    in no row raises ``ValueError`` naming the splits present. Question ``"What sound is this?"``,
    ``answers=(label,)``, ``family="classification"``, ``needs_audio=True``, ``id`` =
    ``"<youtube_id>_<start_seconds:06d>"``. Rows of other splits are checked for shape (four
    non-empty fields) but their media are not looked at.

    ``questions`` picks what each clip becomes (:data:`VGGSOUND_QUESTIONS`):

    * ``"label"`` (default): the classification record above;
    * ``"yes_no"``: two presence records, ``"Is there <label>?"`` -> ``("yes",)`` (id ``<id>:yes``) and
      ``"Is there <other>?"`` -> ``("no",)`` (id ``<id>:no``), ``family="presence"``, where ``<other>`` is
      another label of the same rows (of ``split`` when given), chosen from the clip's id by a hash, so the
      same file always gives the same questions (``meta["asked_label"]`` names the label asked about). Needs
      at least two distinct labels;
    * ``"both"``: the classification record, then the two presence records.
    """
    _check_template(audio_name, {"youtube_id": "x", "start_seconds": 0}, "audio_name")
    if questions not in VGGSOUND_QUESTIONS:
        raise ValueError(f"questions must be one of {VGGSOUND_QUESTIONS}, got {questions!r}")
    labels = _vggsound_labels(csv_path, split) if questions != "label" else []
    cfile, rows = _load_csv(csv_path, header=False)
    adir = _require_dir(audio_dir, "VGGSound audio_dir")
    fdir = _require_dir(frames_dir, "VGGSound frames_dir") if frames_dir is not None else None
    media = _Media(verify_media)
    col = _Collector(cfile, skip_bad)
    seen_splits: set[str] = set()

    def build(row: list[str]) -> Example | None:
        if len(row) != 4:
            raise _RowError(f"expected 4 fields (youtube_id,start_seconds,label,split), got {len(row)}: {row!r}")
        ytid, start_text, label, row_split = (c.strip() for c in row)
        for name, value in (("youtube_id", ytid), ("start_seconds", start_text), ("label", label), ("split", row_split)):
            if not value:
                raise _RowError(f"empty {name}")
        seen_splits.add(row_split)
        if split is not None and row_split != split:
            return None
        start = _as_int(start_text, "start_seconds")
        fname = audio_name.format(youtube_id=ytid, start_seconds=start)
        audio = media.audio(inside(adir, fname))
        image = media.frame(fdir, Path(fname).stem) if fdir is not None else None
        meta = {"youtube_id": ytid, "start_seconds": start, "split": row_split}
        clip_id = f"{ytid}_{start:06d}"
        out = []
        if questions in ("label", "both"):
            out.append(Example(id=clip_id, task="vggsound", family="classification", question=VGGSOUND_PROMPT,
                               answers=(label,), image=image, audio=audio, needs_audio=True, meta=meta))
        if questions in ("yes_no", "both"):
            for asked, answer in ((label, "yes"), (_other_label(labels, label, clip_id), "no")):
                out.append(Example(id=f"{clip_id}:{answer}", task="vggsound", family="presence",
                                   question=VGGSOUND_PRESENCE_PROMPT.format(label=asked), answers=(answer,),
                                   image=image, audio=audio, needs_audio=True,
                                   meta={**meta, "asked_label": asked}))
        return out

    result = _run_rows(col, ((_where(i, r[0] if r else None, line), r) for i, (line, r) in enumerate(rows)), build)
    if split is not None and split not in seen_splits:
        raise ValueError(f"{cfile}: no rows of split {split!r}; splits present: {sorted(seen_splits)}")
    return result


#: What ``read_vggsound(questions=...)`` makes of a clip.
VGGSOUND_QUESTIONS = ("label", "yes_no", "both")
VGGSOUND_PRESENCE_PROMPT = "Is there {label}?"


def _vggsound_labels(csv_path: str | os.PathLike[str], split: str | None) -> list[str]:
    """The distinct labels of the CSV's well-formed rows (of ``split`` when given), sorted: the pool the
    ``"no"`` questions draw from. Raises ``ValueError`` when there are fewer than two."""
    cfile, rows = _load_csv(csv_path, header=False)
    found = {r[2].strip() for _, r in rows if len(r) == 4 and r[2].strip() and (split is None or r[3].strip() == split)}
    if len(found) < 2:
        raise ValueError(f"{cfile}: questions='yes_no' needs at least two distinct labels to ask about one that is "
                         f"not there; found {sorted(found)}")
    return sorted(found)


def _other_label(labels: list[str], label: str, clip_id: str) -> str:
    """A label other than ``label``, picked from ``labels`` by a hash of ``clip_id`` (the same every read)."""
    others = [x for x in labels if x != label]
    return others[int(hashlib.sha256(clip_id.encode()).hexdigest(), 16) % len(others)]
