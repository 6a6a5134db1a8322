"""Readers for public datasets in their published file formats, from local paths only.

Every reader returns a :class:`ReadResult` of :class:`~safe.data.records.Example` records and never
downloads anything. Bad input is never turned into a silently wrong record: a missing annotation
file, a malformed row (missing key, bad JSON, wrong type) or a missing/unreadable image or WAV
raises :class:`DatasetFormatError`, whose message names the file and the row (index and id). With
``skip_bad=True`` bad rows are skipped instead and reported in ``ReadResult.skipped`` /
``ReadResult.problems``; file-level problems (the annotation file itself missing or unparsable, a
media directory that does not exist) still raise.

Media checks: images must exist and pass ``PIL.Image.open(...).verify()``; audio must exist and be
readable by :func:`safe.processing.audio.read_wav` with at least one sample. ``verify_media=False``
keeps only the existence checks (much faster on full-size datasets). Results are cached per path,
so clips shared by many questions are opened once.

All paths in the records are absolute (not symlink-resolved).
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import string
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from safe.processing.audio import read_wav
from safe.data.records import Example

__all__ = [
    "DatasetFormatError",
    "ReadResult",
    "READERS",
    "read_dataset",
    "read_vqav2",
    "read_gqa",
    "read_music_avqa",
    "read_avqa",
    "read_audiocaps",
    "read_clotho",
    "read_vggsound",
]

#: How many problem messages a ReadResult keeps (the count in ``skipped`` is always complete).
MAX_PROBLEMS = 50

CAPTION_PROMPT = "Describe the sound."
VGGSOUND_PROMPT = "What sound is this?"


class DatasetFormatError(ValueError):
    """A dataset file, row or media file is missing or malformed; the message names file and row."""


@dataclass
class ReadResult:
    """What a reader produced.

    Attributes:
        examples: the records, in file order.
        skipped: how many rows were dropped as bad (only non-zero with ``skip_bad=True``).
        problems: the first ``MAX_PROBLEMS`` messages describing the skipped rows.
    """

    examples: list[Example] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


class _RowError(Exception):
    """Internal: what is wrong with one row; the caller adds the file and row to the message."""


# --------------------------------------------------------------------------- shared machinery


def _abs(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute()


def _where(index: int, row_id: Any = None, line: int | None = None) -> str:
    s = f"row {index}"
    if line is not None:
        s += f" (line {line})"
    if row_id is not None:
        s += f", id {row_id!r}"
    return s


class _Collector:
    """Gathers records for one annotation file and applies the skip_bad policy uniformly."""

    def __init__(self, file: Path, skip_bad: bool) -> None:
        self.file = file
        self.skip_bad = skip_bad
        self.result = ReadResult()
        self._seen: dict[str, str] = {}

    def bad(self, where: str, what: str) -> None:
        msg = f"{self.file}: {where}: {what}"
        if not self.skip_bad:
            raise DatasetFormatError(msg)
        self.result.skipped += 1
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(msg)

    def add(self, where: str, example: Example) -> None:
        # Ids key caches and splits downstream; a repeated id would silently merge two records.
        first = self._seen.get(example.id)
        if first is not None:
            self.bad(where, f"duplicate id {example.id!r} (first seen at {first})")
            return
        self._seen[example.id] = where
        self.result.examples.append(example)


def _run_rows(
    col: _Collector,
    rows: Iterable[tuple[str, Any]],
    build: Callable[[Any], Example | None],
) -> ReadResult:
    """Build one record per (where, row); a _RowError becomes a file+row error or a skip."""
    for where, row in rows:
        try:
            ex = build(row)
        except _RowError as err:
            col.bad(where, str(err))
            continue
        if ex is not None:
            col.add(where, ex)
    return col.result


def _load_json(path: str | os.PathLike[str]) -> tuple[Path, Any]:
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    try:
        with open(p, "r", encoding="utf-8") as f:
            return p, json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{p}: not valid JSON: {err}") from err
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetFormatError(f"{p}: cannot read: {err}") from err


def _load_csv(path: str | os.PathLike[str], *, header: bool, required: Iterable[str] = ()) -> tuple[Path, list[tuple[int, Any]]]:
    """Rows as (line number, dict or list); header CSVs must have the ``required`` columns."""
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    rows: list[tuple[int, Any]] = []
    # utf-8-sig: CSVs saved by spreadsheet tools often start with a BOM, which would corrupt the
    # first column name.
    with open(p, "r", encoding="utf-8-sig", newline="") as f:
        reader: Any = csv.DictReader(f) if header else csv.reader(f)
        try:
            if header:
                names = reader.fieldnames
                if names is None:
                    raise DatasetFormatError(f"{p}: empty CSV file, expected a header row")
                missing = [c for c in required if c not in names]
                if missing:
                    raise DatasetFormatError(f"{p}: missing columns {missing}; header has {list(names)}")
            for row in reader:
                rows.append((reader.line_num, row))
        except csv.Error as err:
            raise DatasetFormatError(f"{p}: line {reader.line_num}: malformed CSV: {err}") from err
        except UnicodeDecodeError as err:
            raise DatasetFormatError(f"{p}: not UTF-8 text: {err}") from err
    return p, rows


def _require_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = _abs(path)
    if not p.is_dir():
        raise DatasetFormatError(f"{what} {p} is not a directory")
    return p


def _get(row: Any, key: str, types: type | tuple[type, ...], *, nonempty: bool = False) -> Any:
    if not isinstance(row, dict):
        raise _RowError(f"expected a JSON object, got {type(row).__name__}")
    if key not in row:
        raise _RowError(f"missing key {key!r}")
    value = row[key]
    # bool is an int subclass; a true/false where an id or index belongs is a malformed row.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _RowError(f"key {key!r} is a boolean, expected {_type_names(types)}")
    if not isinstance(value, types):
        raise _RowError(f"key {key!r} has type {type(value).__name__}, expected {_type_names(types)}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise _RowError(f"key {key!r} is empty")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def _cell(row: dict[str | None, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        raise _RowError(f"missing value for column {key!r} (row has too few fields)")
    value = value.strip()
    if not value:
        raise _RowError(f"empty value for column {key!r}")
    return value


def _as_int(text: str, what: str) -> int:
    try:
        f = float(text)
    except ValueError:
        raise _RowError(f"{what} {text!r} is not a number") from None
    if not f.is_integer():
        raise _RowError(f"{what} {text!r} is not a whole number")
    return int(f)


class _Media:
    """Existence / readability checks for images and WAVs, cached per path."""

    def __init__(self, verify: bool) -> None:
        self.verify = verify
        self._cache: dict[Path, str | None] = {}
        self._frames: dict[tuple[Path, str], Path | str] = {}

    def image(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = self._check_image(path)
        if (err := self._cache[path]) is not None:
            raise _RowError(err)
        return str(path)

    def audio(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = self._check_audio(path)
        if (err := self._cache[path]) is not None:
            raise _RowError(err)
        return str(path)

    def frame(self, frames_dir: Path, stem: str) -> str:
        """``<frames_dir>/<stem>.jpg``, else the first (sorted) ``<frames_dir>/<stem>/*.jpg``."""
        key = (frames_dir, stem)
        found = self._frames.get(key)
        if found is None:
            single = frames_dir / f"{stem}.jpg"
            sub = frames_dir / stem
            if single.is_file():
                found = single
            elif sub.is_dir() and (jpgs := sorted(q for q in sub.glob("*.jpg") if q.is_file())):
                found = jpgs[0]
            else:
                found = f"no frame for {stem!r}: neither {single} nor any *.jpg in {sub}"
            self._frames[key] = found
        if isinstance(found, str):
            raise _RowError(found)
        return self.image(found)

    def _check_image(self, path: Path) -> str | None:
        err: str | None = None
        if not path.is_file():
            err = f"image file not found: {path}"
        elif self.verify:
            try:
                with Image.open(path) as im:
                    im.verify()
            # PIL signals a broken file with many exception types (OSError, SyntaxError,
            # struct.error, ...); any of them means the image cannot be used.
            except Exception as e:  # noqa: BLE001
                err = f"unreadable image file {path}: {type(e).__name__}: {e}"
        return err

    def _check_audio(self, path: Path) -> str | None:
        err: str | None = None
        if not path.is_file():
            err = f"audio file not found: {path}"
        elif self.verify:
            try:
                x, _ = read_wav(path)
                if x.size == 0:
                    err = f"audio file has no samples: {path}"
            # AudioReadError is a ValueError; truncated data can also surface as a numpy
            # ValueError (buffer not a multiple of the sample size) or as wave/EOF errors.
            except (ValueError, OSError, EOFError, wave.Error) as e:
                msg = str(e)
                err = msg if str(path) in msg else f"unreadable audio file {path}: {msg}"
        return err


def _parse_encoded_list(value: Any, key: str) -> list[str]:
    """A list stored as a JSON string (the published MUSIC-AVQA encoding) or as a real list."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            # Re-saved copies of the files often hold Python reprs ("['cello']"); the reference
            # loaders use ast.literal_eval, so accept what they accept.
            try:
                items = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise _RowError(f"key {key!r} is not a JSON-encoded list: {value!r}") from None
    else:
        raise _RowError(f"key {key!r} has type {type(value).__name__}, expected a JSON-encoded list")
    if not isinstance(items, list):
        raise _RowError(f"key {key!r} does not encode a list: {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _RowError(f"key {key!r} holds a non-string item {item!r}")
        out.append(str(item))
    return out


def _family(text: str) -> str:
    return "_".join(text.strip().lower().split())


def _check_template(template: str, fields: dict[str, Any], param: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = sorted(n for n in names if n not in fields)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        template.format(**fields)
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(f"{param}={template!r} is not a valid template ({err}); fields: {sorted(fields)}") from None


# --------------------------------------------------------------------------- VQAv2


def read_vqav2(
    questions_json: str | os.PathLike[str],
    annotations_json: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    image_subtype: str | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read VQAv2 (official release) into image-only records (``needs_audio=False``, no audio).

    Expected layout::

        v2_OpenEnded_mscoco_<subtype>_questions.json   {"data_subtype": "val2014",
                                                        "questions": [{"image_id", "question", "question_id"}]}
        v2_mscoco_<subtype>_annotations.json           {"annotations": [{"question_id", "image_id",
                                                        "answers": [{"answer", ...} x10], "multiple_choice_answer",
                                                        "question_type", "answer_type"}]}
        <image_dir>/COCO_<subtype>_<image_id:012d>.jpg  e.g. val2014/COCO_val2014_000000000042.jpg

    ``image_subtype`` defaults to the questions file's ``data_subtype`` (e.g. ``"val2014"``).
    ``answers`` = ``multiple_choice_answer`` first, then the ten annotator answers verbatim
    (duplicates kept, so VQA accuracy ``min(#matches / 3, 1)`` can be computed over
    ``answers[1:]``). ``family`` = ``answer_type`` (``"yes/no"``, ``"number"``, ``"other"``), else
    ``question_type``. ``id`` = the question id. Questions without an annotation are bad rows;
    annotations without a question are ignored. ``skipped`` counts bad rows of both files.
    """
    qfile, qdata = _load_json(questions_json)
    afile, adata = _load_json(annotations_json)
    img_dir = _require_dir(image_dir, "VQAv2 image_dir")
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise DatasetFormatError(f"{qfile}: expected an object with a 'questions' list")
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        raise DatasetFormatError(f"{afile}: expected an object with an 'annotations' list")
    subtype = image_subtype if image_subtype is not None else qdata.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise DatasetFormatError(f"{qfile}: no 'data_subtype' (e.g. 'val2014'); pass image_subtype=")

    # Annotation rows are validated lazily, when their question asks for them, so an error names
    # the annotations file and the annotation's own row index.
    ann_col = _Collector(afile, skip_bad)
    anns: dict[int, tuple[int, Any]] = {}
    for i, ann in enumerate(adata["annotations"]):
        try:
            qid = _get(ann, "question_id", int)
        except _RowError as err:
            ann_col.bad(_where(i), str(err))
            continue
        if qid in anns:
            ann_col.bad(_where(i, qid), f"duplicate question_id (first at row {anns[qid][0]})")
            continue
        anns[qid] = (i, ann)

    media = _Media(verify_media)
    col = _Collector(qfile, skip_bad)

    def build(q: Any) -> Example:
        qid = _get(q, "question_id", int)
        image_id = _get(q, "image_id", int)
        question = _get(q, "question", str, nonempty=True)
        if qid not in anns:
            raise _RowError(f"no annotation with this question_id in {afile}")
        ai, ann = anns[qid]
        try:
            mca = _get(ann, "multiple_choice_answer", str, nonempty=True)
            raw = _get(ann, "answers", list)
            annotator = []
            for a in raw:
                if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                    raise _RowError(f"'answers' item {a!r} is not an object with a string 'answer'")
                annotator.append(a["answer"])
            ann_image = _get(ann, "image_id", int)
            if ann_image != image_id:
                raise _RowError(f"image_id {ann_image} differs from the question's image_id {image_id}")
            qtype = ann.get("question_type")
            atype = ann.get("answer_type")
        except _RowError as err:
            raise _RowError(f"annotation {afile} {_where(ai, qid)}: {err}") from None
        family = atype if isinstance(atype, str) and atype else qtype if isinstance(qtype, str) and qtype else "unknown"
        image = media.image(img_dir / f"COCO_{subtype}_{image_id:012d}.jpg")
        return Example(
            id=str(qid), task="vqav2", family=family, question=question,
            answers=(mca, *annotator), image=image, audio=None, needs_audio=False,
            meta={"image_id": image_id, "question_type": qtype, "answer_type": atype},
        )

    rows = ((_where(i, _peek(q, "question_id")), q) for i, q in enumerate(qdata["questions"]))
    result = _run_rows(col, rows, build)
    result.skipped += ann_col.result.skipped
    result.problems = (ann_col.result.problems + result.problems)[:MAX_PROBLEMS]
    return result


def _peek(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else None


# --------------------------------------------------------------------------- GQA


def read_gqa(
    questions_json: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read GQA questions (official release) into image-only records (``needs_audio=False``).

    Expected layout::

        <split>_balanced_questions.json   {"<question id>": {"imageId", "question", "answer",
                                            "fullAnswer", "types": {"structural", "semantic", "detailed"}, ...}}
        <image_dir>/<imageId>.jpg         the published allImages/images/ folder

    ``id`` = the question id (the dict key); ``answers`` = ``(answer,)``; ``family`` = the
    ``detailed`` type (falling back to ``semantic``, then ``structural``); all three types and
    ``fullAnswer`` go to ``meta``. The test/challenge files publish no answers, so their rows are
    bad rows here.
    """
    qfile, data = _load_json(questions_json)
    img_dir = _require_dir(image_dir, "GQA image_dir")
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{qfile}: expected an object keyed by question id, got {type(data).__name__}")
    media = _Media(verify_media)
    col = _Collector(qfile, skip_bad)

    def build(item: tuple[str, Any]) -> Example:
        qid, q = item
        image_id = _get(q, "imageId", str, nonempty=True)
        question = _get(q, "question", str, nonempty=True)
        answer = _get(q, "answer", str, nonempty=True)
        types = _get(q, "types", dict)
        candidates = [types.get(k) for k in ("detailed", "semantic", "structural")]
        family = next((t for t in candidates if isinstance(t, str) and t.strip()), None)
        if family is None:
            raise _RowError("'types' has none of 'detailed', 'semantic', 'structural'")
        image = media.image(img_dir / f"{image_id}.jpg")
        return Example(
            id=str(qid), task="gqa", family=family, question=question, answers=(answer,),
            image=image, audio=None, needs_audio=False,
            meta={"image_id": image_id, "types": dict(types), "full_answer": q.get("fullAnswer")},
        )

    rows = ((_where(i, k), (k, q)) for i, (k, q) in enumerate(data.items()))
    return _run_rows(col, rows, build)


# --------------------------------------------------------------------------- MUSIC-AVQA

_PLACEHOLDER = re.compile(r"<[^<>]+>")
_MUSIC_AVQA_MODALITY = {"audio": True, "audio-visual": True, "visual": False}


def read_music_avqa(
    questions_json: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
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
    """
    qfile, data = _load_json(questions_json)
    fdir = _require_dir(frames_dir, "MUSIC-AVQA frames_dir")
    adir = _require_dir(audio_dir, "MUSIC-AVQA audio_dir")
    if not isinstance(data, list):
        raise DatasetFormatError(f"{qfile}: expected a JSON list of questions, got {type(data).__name__}")
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
        audio = media.audio(adir / f"{video_id}.wav")
        return Example(
            id=str(qid), task="music_avqa", family="/".join(_family(t) for t in types),
            question=question, answers=(answer,), image=image, audio=audio,
            needs_audio=_MUSIC_AVQA_MODALITY[modality],
            meta={"video_id": video_id, "type": types, "question_content": template, "templ_values": values},
        )

    rows = ((_where(i, _peek(q, "question_id")), q) for i, q in enumerate(data))
    return _run_rows(col, rows, build)


# --------------------------------------------------------------------------- AVQA (Yang et al., MM 2022)

#: ``question_relation`` values read as "answerable from the picture alone" (case-insensitive).
AVQA_VISUAL_ONLY_RELATIONS = frozenset({"view", "visual", "vision", "visual-only", "visual only", "visual_only"})


def read_avqa(
    questions_json: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    include_choices: bool = False,
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
    """
    qfile, data = _load_json(questions_json)
    fdir = _require_dir(frames_dir, "AVQA frames_dir")
    adir = _require_dir(audio_dir, "AVQA audio_dir")
    if not isinstance(data, list):
        raise DatasetFormatError(f"{qfile}: expected a JSON list of questions, got {type(data).__name__}")
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
        image = media.frame(fdir, video_name)
        audio = media.audio(adir / f"{video_name}.wav")
        return Example(
            id=str(qid), task="avqa", family=_family(qtype), question=question, answers=(answer,),
            image=image, audio=audio, needs_audio=needs_audio,
            meta={"video_name": video_name, "video_id": q.get("video_id"), "choices": list(choices),
                  "answer_index": raw_answer, "question_type": qtype, "question_relation": relation},
        )

    rows = ((_where(i, _peek(q, "id")), q) for i, q in enumerate(data))
    return _run_rows(col, rows, build)


# --------------------------------------------------------------------------- AudioCaps


def read_audiocaps(
    captions_csv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    audio_name: str = "{youtube_id}_{start_time}.wav",
    frames_dir: str | os.PathLike[str] | None = None,
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
    """
    _check_template(audio_name, {"audiocap_id": "0", "youtube_id": "x", "start_time": 0}, "audio_name")
    cfile, rows = _load_csv(captions_csv, header=True, required=("audiocap_id", "youtube_id", "start_time", "caption"))
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
        audio = media.audio(adir / fname)
        image = media.frame(fdir, Path(fname).stem) if fdir is not None else None
        return Example(
            id=cap_id, task="audiocaps", family="caption", question=CAPTION_PROMPT, answers=(caption,),
            image=image, audio=audio, needs_audio=True,
            meta={"audiocap_id": cap_id, "youtube_id": ytid, "start_time": start},
        )

    return _run_rows(col, ((_where(i, r.get("audiocap_id"), line), r) for i, (line, r) in enumerate(rows)), build)


# --------------------------------------------------------------------------- Clotho

CLOTHO_CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, 6))


def read_clotho(
    captions_csv: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
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
    """
    cfile, rows = _load_csv(captions_csv, header=True, required=("file_name", *CLOTHO_CAPTION_COLUMNS))
    adir = _require_dir(audio_dir, "Clotho audio_dir")
    media = _Media(verify_media)
    col = _Collector(cfile, skip_bad)

    def build(row: dict[str | None, Any]) -> Example:
        if row.get(None):
            raise _RowError(f"too many fields (extra: {row[None]!r}); is a caption comma not quoted?")
        name = _cell(row, "file_name")
        captions = tuple(_cell(row, c) for c in CLOTHO_CAPTION_COLUMNS)
        audio = media.audio(adir / name)
        return Example(
            id=name, task="clotho", family="caption", question=CAPTION_PROMPT, answers=captions,
            image=None, audio=audio, needs_audio=True, meta={"file_name": name},
        )

    return _run_rows(col, ((_where(i, r.get("file_name"), line), r) for i, (line, r) in enumerate(rows)), build)


# --------------------------------------------------------------------------- VGGSound


def read_vggsound(
    csv_path: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    split: str | None = None,
    audio_name: str = "{youtube_id}_{start_seconds:06d}.wav",
    frames_dir: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    verify_media: bool = True,
) -> ReadResult:
    """Read VGGSound (``vggsound.csv``), one classification record per clip.

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
    """
    _check_template(audio_name, {"youtube_id": "x", "start_seconds": 0}, "audio_name")
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
        audio = media.audio(adir / fname)
        image = media.frame(fdir, Path(fname).stem) if fdir is not None else None
        return Example(
            id=f"{ytid}_{start:06d}", task="vggsound", family="classification", question=VGGSOUND_PROMPT,
            answers=(label,), image=image, audio=audio, needs_audio=True,
            meta={"youtube_id": ytid, "start_seconds": start, "split": row_split},
        )

    result = _run_rows(col, ((_where(i, r[0] if r else None, line), r) for i, (line, r) in enumerate(rows)), build)
    if split is not None and split not in seen_splits:
        raise ValueError(f"{cfile}: no rows of split {split!r}; splits present: {sorted(seen_splits)}")
    return result


# --------------------------------------------------------------------------- registry

READERS: dict[str, Callable[..., ReadResult]] = {
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "music_avqa": read_music_avqa,
    "avqa": read_avqa,
    "audiocaps": read_audiocaps,
    "clotho": read_clotho,
    "vggsound": read_vggsound,
}


def read_dataset(name: str, **kwargs: Any) -> ReadResult:
    """Read a public dataset by registry name (see :data:`READERS`) with that reader's arguments.

    Names are case-insensitive and ``-`` equals ``_`` (``"MUSIC-AVQA"`` -> ``"music_avqa"``).
    An unknown name raises ``ValueError`` listing the supported names.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(sorted(READERS))}")
    return READERS[key](**kwargs)
