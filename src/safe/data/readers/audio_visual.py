"""Audio-visual question answering: MUSIC-AVQA and AVQA, in their published layouts."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe.data.readers._common import (
    DatasetFormatError,
    ReadResult,
    _Collector,
    _family,
    _get,
    _json_items,
    _json_root,
    _Media,
    _parse_encoded_list,
    _peek,
    _require_dir,
    _RowError,
    _run_rows,
    _where,
    inside,
)
from safe.data.readers.frames import check_key_frames, key_frame_paths, tile_frames
from safe.data.readers.maps import MapColumn, RowMaps
from safe.data.records import Example

# --------------------------------------------------------------------------- MUSIC-AVQA

_PLACEHOLDER = re.compile(r"<[^<>]+>")
_MUSIC_AVQA_MODALITY = {"audio": True, "audio-visual": True, "visual": False}


def read_music_avqa(
    questions_json: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    modalities: Mapping[str, MapColumn] | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read MUSIC-AVQA (``avqa-train.json`` / ``avqa-val.json`` / ``avqa-test.json``).

    Expected layout::

        avqa-<split>.json    [{"video_id": "00000272", "question_id": 7,
                               "type": "[\\"Audio\\", \\"Counting\\"]",        (JSON-encoded list)
                               "question_content": "Is the <Object> in the video always playing?",
                               "templ_values": "[\\"cello\\"]",               (JSON-encoded list)
                               "anser": "yes"}, ...]                         ("anser" [sic]; "answer" also accepted)
        <frames_dir>/<video_id>.jpg              one key frame per video, or
        <frames_dir>/<video_id>/*.jpg            extracted frames; the first in sorted order is used
        <audio_dir>/<video_id>.wav               the video's soundtrack as PCM WAV

    Placeholders (``<Object>``, ``<LR>``, ...) are filled in order from ``templ_values``; a count
    mismatch is a bad row. ``needs_audio`` = the first type is ``Audio`` or ``Audio-Visual``
    (``Visual`` questions are False; their audio is still attached). ``family`` = the type list
    lower-cased and joined with ``/`` (e.g. ``"audio/counting"``). ``id`` = the question id.
    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    """
    qfile, root, _ = _json_root(questions_json)
    fdir = _require_dir(frames_dir, "MUSIC-AVQA frames_dir")
    adir = _require_dir(audio_dir, "MUSIC-AVQA audio_dir")
    if root != "list":
        raise DatasetFormatError(f"{qfile}: expected a JSON list of questions, got {root}")
    media = _Media(verify_media)
    col = _Collector(qfile, skip_bad)

    def build(q: Any) -> Example:
        qid = _get(q, "question_id", (int, str))
        video_id = str(_get(q, "video_id", (str, int)))
        if not video_id.strip():
            raise _RowError("key 'video_id' is empty")
        types = _parse_encoded_list(_get(q, "type", (str, list)), "type")
        if not types:
            raise _RowError("key 'type' is an empty list")
        modality = types[0].strip().lower()
        if modality not in _MUSIC_AVQA_MODALITY:
            raise _RowError(f"unknown modality {types[0]!r} in 'type' (expected Audio, Visual or Audio-Visual)")
        template = _get(q, "question_content", str, nonempty=True)
        values = _parse_encoded_list(_get(q, "templ_values", (str, list)), "templ_values")
        holes = _PLACEHOLDER.findall(template)
        if len(holes) != len(values):
            raise _RowError(f"question has {len(holes)} placeholder(s) {holes} but templ_values has {len(values)}: {values}")
        it = iter(values)
        question = _PLACEHOLDER.sub(lambda _m: next(it), template)
        answer_key = "anser" if isinstance(q, dict) and "anser" in q else "answer"
        if not isinstance(q, dict) or answer_key not in q:
            raise _RowError("missing key 'anser' (the published answer key)")
        answer = _get(q, answer_key, str, nonempty=True)
        image = media.frame(fdir, video_id)
        audio = media.audio(inside(adir, f"{video_id}.wav"))
        return Example(
            id=str(qid), task="music_avqa", family="/".join(_family(t) for t in types),
            question=question, answers=(answer,), image=image, audio=audio,
            needs_audio=_MUSIC_AVQA_MODALITY[modality],
            meta={"video_id": video_id, "type": types, "question_content": template, "templ_values": values},
        )

    rows = ((_where(i, _peek(q, "question_id")), q) for i, q in enumerate(_json_items(qfile, "item")))
    return _run_rows(col, rows, build, RowMaps(modalities))


# --------------------------------------------------------------------------- AVQA (Yang et al., MM 2022)

#: ``question_relation`` values read as "answerable from the picture alone" (case-insensitive).
AVQA_VISUAL_ONLY_RELATIONS = frozenset({"view", "visual", "vision", "visual-only", "visual only", "visual_only"})


def read_avqa(
    questions_json: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    include_choices: bool = False,
    key_frames: int = 1,
    tiles_dir: str | os.PathLike[str] | None = None,
    modalities: Mapping[str, MapColumn] | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read AVQA (Yang et al., ACM MM 2022; ``train_qa.json`` / ``val_qa.json``).

    Expected layout::

        <split>_qa.json    [{"id": 183, "video_id": 341, "video_name": "-HG3Omg_89c_000030",
                             "question_text": "What happened in the video?",
                             "multi_choice": ["a", "b", "c", "d"], "answer": 1,
                             "question_type": "Happening", "question_relation": "Both"}, ...]
        <frames_dir>/<video_name>.jpg            one key frame per video, or
        <frames_dir>/<video_name>/*.jpg          extracted frames; the first in sorted order is used
        <audio_dir>/<video_name>.wav             the clip's soundtrack (the official repo's data/audio/)

    Confirmed from the official code (github.com/AlyssaYoung/AVQA, preprocess/): a JSON list with
    ``id``, ``video_id``, ``video_name``, ``question_text``, ``multi_choice``, ``answer`` (index into
    ``multi_choice``) and ``question_type`` (Which, Come From, Happening, Where, Why, Before Next,
    When, Used For). NOT confirmed: ``question_relation`` and its values. When present and one of
    :data:`AVQA_VISUAL_ONLY_RELATIONS` the row gets ``needs_audio=False``; otherwise (absent or any
    other value) ``needs_audio=True``, since AVQA questions are written to need the sound.

    ``answers`` = ``(multi_choice[answer],)``; the choices go to ``meta["choices"]``. With
    ``include_choices=True`` the question ends with ``" Choices: a; b; c; d."``. ``family`` =
    ``question_type`` lower-cased with ``_`` for spaces (e.g. ``"come_from"``). ``id`` = ``id``.

    ``key_frames`` (1 to 3; the proposal evaluates AVQA with 1 to 3): with 1 the row's image is the key frame
    above; with 2 or 3 it is that many frames of ``<frames_dir>/<video_name>/*.jpg`` spread over the clip,
    tiled into one near-square image written under ``tiles_dir`` (required then; a data spec passes its
    ``cache_dir``), since the base takes one image per row (:mod:`safe.data.readers.frames`: which frames,
    the grid, why). ``meta["key_frames"]`` lists the frames tiled. A video with fewer frames is a bad row.

    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    """
    key_frames = check_key_frames(key_frames)
    if key_frames > 1 and tiles_dir is None:
        raise ValueError(f"key_frames={key_frames}: pass tiles_dir, the folder the tiled images are written to")
    qfile, root, _ = _json_root(questions_json)
    fdir = _require_dir(frames_dir, "AVQA frames_dir")
    adir = _require_dir(audio_dir, "AVQA audio_dir")
    if root != "list":
        raise DatasetFormatError(f"{qfile}: expected a JSON list of questions, got {root}")
    media = _Media(verify_media)
    col = _Collector(qfile, skip_bad)

    def build(q: Any) -> Example:
        qid = _get(q, "id", (int, str))
        video_name = _get(q, "video_name", str, nonempty=True)
        question = _get(q, "question_text", str, nonempty=True)
        choices = _get(q, "multi_choice", list)
        if not choices:
            raise _RowError("key 'multi_choice' is an empty list")
        for c in choices:
            # The official preprocessing maps missing choices (null) to a placeholder, so null is
            # tolerated for wrong options; anything else is malformed.
            if c is not None and not isinstance(c, str):
                raise _RowError(f"'multi_choice' item {c!r} is not a string")
        raw_answer = _get(q, "answer", (int, str))
        if isinstance(raw_answer, str):
            if not raw_answer.strip().isdigit():
                raise _RowError(f"key 'answer' {raw_answer!r} is not a choice index")
            raw_answer = int(raw_answer)
        if not 0 <= raw_answer < len(choices):
            raise _RowError(f"answer index {raw_answer} out of range for {len(choices)} choices")
        answer = choices[raw_answer]
        if not isinstance(answer, str) or not answer.strip():
            raise _RowError(f"the correct choice (index {raw_answer}) is empty or null")
        qtype = _get(q, "question_type", str, nonempty=True)
        relation = q.get("question_relation")
        if relation is not None and not isinstance(relation, str):
            raise _RowError(f"key 'question_relation' has type {type(relation).__name__}, expected str")
        needs_audio = not (relation is not None and relation.strip().lower() in AVQA_VISUAL_ONLY_RELATIONS)
        if include_choices:
            question = f"{question} Choices: {'; '.join(c for c in choices if isinstance(c, str))}."
        meta = {"video_name": video_name, "video_id": q.get("video_id"), "choices": list(choices),
                "answer_index": raw_answer, "question_type": qtype, "question_relation": relation}
        if key_frames == 1:
            image = media.frame(fdir, video_name)
        else:
            frames = [media.image(p) for p in key_frame_paths(fdir, video_name, key_frames)]
            image = str(tile_frames([Path(f) for f in frames], Path(tiles_dir).absolute()))
            meta["key_frames"] = frames
        audio = media.audio(inside(adir, f"{video_name}.wav"))
        return Example(
            id=str(qid), task="avqa", family=_family(qtype), question=question, answers=(answer,),
            image=image, audio=audio, needs_audio=needs_audio, meta=meta,
        )

    rows = ((_where(i, _peek(q, "id")), q) for i, q in enumerate(_json_items(qfile, "item")))
    return _run_rows(col, rows, build, RowMaps(modalities))
