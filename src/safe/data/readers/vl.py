"""VL-only question answering: VQAv2 and GQA, in their published JSON layouts."""
from __future__ import annotations

import os
from typing import Any

from safe.data.records import Example
from safe.data.readers._common import (DatasetFormatError, MAX_PROBLEMS, ReadResult, _Collector, _Media,
                                       _RowError, _get, _load_json, _peek, _require_dir, _run_rows, _where)

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
