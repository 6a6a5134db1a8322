"""VL-only question answering: VQAv2 and GQA, in their published JSON layouts."""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from safe.data.readers._common import (
    MAX_PROBLEMS,
    DatasetFormatError,
    ReadResult,
    _Collector,
    _get,
    _json_items,
    _json_root,
    _Media,
    _peek,
    _require_dir,
    _RowError,
    _run_rows,
    _where,
    inside,
)
from safe.data.readers.maps import MapColumn, RowMaps
from safe.data.records import Example

# --------------------------------------------------------------------------- VQAv2


def read_vqav2(
    questions_json: str | os.PathLike[str],
    annotations_json: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    image_subtype: str | None = None,
    modalities: Mapping[str, MapColumn] | None = None,
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
    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    The map columns are keys of the question objects.
    """
    # Only the top levels are read here (up to the keys needed); the rows are parsed one at a time below.
    qfile, qroot, qtop = _json_root(questions_json, ("questions",) if image_subtype else ("data_subtype", "questions"))
    afile, aroot, atop = _json_root(annotations_json, ("annotations",))
    img_dir = _require_dir(image_dir, "VQAv2 image_dir")
    if qroot != "dict" or qtop.get("questions", ("",))[0] != "start_array":
        raise DatasetFormatError(f"{qfile}: expected an object with a 'questions' list")
    if aroot != "dict" or atop.get("annotations", ("",))[0] != "start_array":
        raise DatasetFormatError(f"{afile}: expected an object with an 'annotations' list")
    subtype = image_subtype if image_subtype is not None else qtop.get("data_subtype", ("", None))[1]
    if not isinstance(subtype, str) or not subtype:
        raise DatasetFormatError(f"{qfile}: no 'data_subtype' (e.g. 'val2014'); pass image_subtype=")

    with closing(_Annotations()) as anns:
        ann_col = _Collector(afile, skip_bad)
        for i, ann in enumerate(_json_items(afile, "annotations.item")):
            try:
                qid = _get(ann, "question_id", int)
            except _RowError as err:
                ann_col.bad(_where(i), str(err))
                continue
            first = anns.add(qid, i, ann)
            if first is not None:
                ann_col.bad(_where(i, qid), f"duplicate question_id (first at row {first})")
        result = _read_questions(qfile, afile, anns, img_dir, subtype, skip_bad, verify_media, RowMaps(modalities))
    result.skipped += ann_col.result.skipped
    result.problems = (ann_col.result.problems + result.problems)[:MAX_PROBLEMS]
    return result


class _Annotations:
    """The VQAv2 annotations by question id, each reduced to what a record takes from it (or what is
    wrong with it), in a private temporary SQLite database (on disk, deleted when closed): the join
    holds no parsed annotation in memory (the full train split's are about 2 GB as Python objects).

    Annotation rows are validated here but their errors are reported only when a question asks for
    them, naming the annotations file and the annotation's own row index."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a temporary on-disk database, removed on close
        # TEXT key: any Python int fits (SQLite integers stop at 64 bits).
        self._db.execute("CREATE TABLE ann (qid TEXT PRIMARY KEY, row INTEGER, err TEXT, data TEXT) WITHOUT ROWID")

    def add(self, qid: int, row: int, ann: dict[str, Any]) -> int | None:
        """Store annotation ``row``; the row of the first annotation of ``qid`` if there is one already."""
        err, data = None, None
        try:
            mca = _get(ann, "multiple_choice_answer", str, nonempty=True)
            raw = _get(ann, "answers", list)
            annotator = []
            for a in raw:
                if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                    raise _RowError(f"'answers' item {a!r} is not an object with a string 'answer'")
                annotator.append(a["answer"])
            ann_image = _get(ann, "image_id", int)
            data = json.dumps([mca, annotator, ann_image, ann.get("question_type"), ann.get("answer_type")])
        except _RowError as e:
            err = str(e)
        try:
            self._db.execute("INSERT INTO ann VALUES (?, ?, ?, ?)", (str(qid), row, err, data))
        except sqlite3.IntegrityError:
            return self._db.execute("SELECT row FROM ann WHERE qid = ?", (str(qid),)).fetchone()[0]
        return None

    def get(self, qid: int) -> tuple[int, str | None, str | None] | None:
        """``(row, error, JSON [mca, answers, image_id, question_type, answer_type])`` or None."""
        return self._db.execute("SELECT row, err, data FROM ann WHERE qid = ?", (str(qid),)).fetchone()

    def close(self) -> None:
        self._db.close()


def _read_questions(qfile: Path, afile: Path, anns: _Annotations, img_dir: Path, subtype: str, skip_bad: bool,
                    verify_media: bool, maps: RowMaps | None = None) -> ReadResult:
    media = _Media(verify_media)
    col = _Collector(qfile, skip_bad)

    def build(q: Any) -> Example:
        qid = _get(q, "question_id", int)
        image_id = _get(q, "image_id", int)
        question = _get(q, "question", str, nonempty=True)
        found = anns.get(qid)
        if found is None:
            raise _RowError(f"no annotation with this question_id in {afile}")
        ai, err, data = found
        if err is None:
            mca, annotator, ann_image, qtype, atype = json.loads(data)
            if ann_image != image_id:
                err = f"image_id {ann_image} differs from the question's image_id {image_id}"
        if err is not None:
            raise _RowError(f"annotation {afile} {_where(ai, qid)}: {err}")
        family = atype if isinstance(atype, str) and atype else qtype if isinstance(qtype, str) and qtype else "unknown"
        image = media.image(inside(img_dir, f"COCO_{subtype}_{image_id:012d}.jpg"))
        return Example(
            id=str(qid), task="vqav2", family=family, question=question,
            answers=(mca, *annotator), image=image, audio=None, needs_audio=False,
            meta={"image_id": image_id, "question_type": qtype, "answer_type": atype},
        )

    rows = ((_where(i, _peek(q, "question_id")), q) for i, q in enumerate(_json_items(qfile, "questions.item")))
    return _run_rows(col, rows, build, maps)




# --------------------------------------------------------------------------- GQA


def read_gqa(
    questions_json: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    modalities: Mapping[str, MapColumn] | None = None,
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
    ``modalities``: maps of other modalities named by a column of each row (:mod:`safe.data.readers.maps`),
    recorded as ``meta["modalities"]``.
    The map columns are keys of each question's object.
    """
    qfile, root, _ = _json_root(questions_json)
    img_dir = _require_dir(image_dir, "GQA image_dir")
    if root != "dict":
        raise DatasetFormatError(f"{qfile}: expected an object keyed by question id, got {root}")
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
        image = media.image(inside(img_dir, f"{image_id}.jpg"))
        return Example(
            id=str(qid), task="gqa", family=family, question=question, answers=(answer,),
            image=image, audio=None, needs_audio=False,
            meta={"image_id": image_id, "types": dict(types), "full_answer": q.get("fullAnswer")},
        )

    rows = ((_where(i, k), (k, q)) for i, (k, q) in enumerate(_json_items(qfile, "", pairs=True)))
    return _run_rows(col, rows, build, RowMaps(modalities), fields=lambda item: item[1])
