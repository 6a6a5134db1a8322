"""The readers parse annotation files incrementally: reading a large file holds one row at a time, not
the parsed file (issue 16: `safe data check` and a split's first reading at constant memory)."""
from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safe.data.readers import DatasetFormatError, read_audiocaps, read_music_avqa, read_vqav2, stream_rows
from safe.data.readers._common import _Media
from safe.processing.audio import write_wav

N = 20_000
SHARED = 10  # media files the rows share (media checks are remembered per path; the rows' text is what grows)
ANSWERS = ["red", "dark red", "maroon", "crimson", "red", "red", "scarlet", "red", "red", "ruby"]

# Reading N rows with the records streamed to a sink, measured by tracemalloc: about 1 MB here (the
# media checks of the latest paths, parser buffers; the duplicate-id check is on disk). The bound
# leaves room for the interpreter's own tables: pathlib interns path parts, and a resize of the
# interned-string table shows up as 1-4 MB. Parsing the files whole (json.load; csv rows in a list)
# and keeping the ids in a dict, as the readers used to, peaks at about 89 MB for the VQAv2 files
# below and 22 MB for the CSV.
JSON_BOUND = CSV_BOUND = 8 * 2**20
CAPTION = "a dog barks twice in the distance while a car engine idles and rain falls on a metal roof " * 6


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 200, 10)).save(path, "JPEG")


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.linspace(-0.5, 0.5, 160), 16000)


def _vqav2_files(root: Path, n: int, *, subtype_last: bool = False) -> tuple[Path, Path, Path]:
    img_dir = root / "val2014"
    for k in range(1, SHARED + 1):
        _jpg(img_dir / f"COCO_val2014_{k:012d}.jpg")
    questions = [{"image_id": i % SHARED + 1, "question": f"What color is thing {i}?", "question_id": 10 * i + 3}
                 for i in range(n)]
    annotations = [{"question_id": 10 * i + 3, "image_id": i % SHARED + 1, "multiple_choice_answer": "red",
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(ANSWERS)],
                    "question_type": "what color is the", "answer_type": "other"}
                   for i in reversed(range(n))]  # the join must not depend on the files' orders agreeing
    qdoc = {"questions": questions, "data_subtype": "val2014"} if subtype_last else {"data_subtype": "val2014", "questions": questions}
    qf, af = root / "questions.json", root / "annotations.json"
    qf.write_text(json.dumps(qdoc), encoding="utf-8")
    af.write_text(json.dumps({"info": {"year": 2017}, "annotations": annotations}), encoding="utf-8")
    return qf, af, img_dir


@pytest.fixture(scope="module")
def big_vqav2(tmp_path_factory):
    return _vqav2_files(tmp_path_factory.mktemp("vqav2"), N)


@pytest.fixture(scope="module")
def big_audiocaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiocaps")
    for k in range(SHARED):
        _wav(root / "audio" / f"yt{k}.wav")
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for i in range(N):
            w.writerow([str(100 + i), f"yt{i % SHARED}", "30", f"{CAPTION}{i}"])
    return root / "train.csv", root / "audio"


def _streamed_peak(read) -> tuple[int, list[str]]:
    """Run ``read`` with its records streamed to a sink; tracemalloc's peak and the ids seen (first/last 3)."""
    ids: list[str] = []
    count = 0

    def sink(e) -> None:
        nonlocal count
        count += 1
        if len(ids) < 3:
            ids.append(e.id)
        last[:] = [*last[-2:], e.id]

    last: list[str] = []
    tracemalloc.start()
    try:
        with stream_rows(sink):
            result = read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.examples == [] and result.skipped == 0 and count == N
    return peak, ids + last


def test_vqav2_reading_does_not_hold_the_parsed_files(big_vqav2):
    qf, af, img_dir = big_vqav2
    assert af.stat().st_size > 5_000_000  # a file whose parsed form alone is far above the bound
    peak, ids = _streamed_peak(lambda: read_vqav2(qf, af, img_dir))
    assert peak < JSON_BOUND, f"peak {peak / 2**20:.1f} MiB while reading {N} VQAv2 rows"
    assert ids == ["3", "13", "23", str(10 * (N - 3) + 3), str(10 * (N - 2) + 3), str(10 * (N - 1) + 3)]


def test_audiocaps_reading_does_not_hold_the_csv_rows(big_audiocaps):
    csv_path, audio_dir = big_audiocaps
    peak, ids = _streamed_peak(lambda: read_audiocaps(csv_path, audio_dir, audio_name="{youtube_id}.wav"))
    assert peak < CSV_BOUND, f"peak {peak / 2**20:.1f} MiB while reading {N} AudioCaps rows"
    assert ids == ["100", "101", "102", str(100 + N - 3), str(100 + N - 2), str(100 + N - 1)]


def test_vqav2_records_do_not_depend_on_key_order_and_truncation_is_a_file_error(tmp_path):
    qf, af, img_dir = _vqav2_files(tmp_path / "a", 5)
    qf2, af2, img_dir2 = _vqav2_files(tmp_path / "b", 5, subtype_last=True)  # data_subtype after the questions
    a, b = read_vqav2(qf, af, img_dir).examples, read_vqav2(qf2, af2, img_dir2).examples
    assert [e.id for e in a] == ["3", "13", "23", "33", "43"]
    assert [e.answers for e in a] == [("red", *ANSWERS)] * 5
    assert [(e.id, e.question, e.answers, e.family, e.meta, Path(e.image).name) for e in a] == \
        [(e.id, e.question, e.answers, e.family, e.meta, Path(e.image).name) for e in b]

    # A file cut in the middle of its rows: the rows before the cut may already have been built (and
    # streamed), but the reading fails with the file named, never a short result.
    text = af.read_text()
    af.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetFormatError, match=r"annotations\.json: not valid JSON"):
        read_vqav2(qf, af, img_dir, skip_bad=True)
    qf.write_text(qf.read_text()[:-40])
    with pytest.raises(DatasetFormatError, match=r"questions\.json: not valid JSON"):
        read_vqav2(qf, af2, img_dir, skip_bad=True)


def test_music_avqa_truncated_after_good_rows_raises_instead_of_a_short_result(tmp_path):
    rows = [{"video_id": "v1", "question_id": i, "type": '["Audio", "Counting"]',
             "question_content": "How many instruments?", "templ_values": "[]", "anser": "two"} for i in range(50)]
    (tmp_path / "frames").mkdir()
    _jpg(tmp_path / "frames" / "v1.jpg")
    _wav(tmp_path / "audio" / "v1.wav")
    qf = tmp_path / "avqa-test.json"
    qf.write_text(json.dumps(rows))
    assert [e.id for e in read_music_avqa(qf, tmp_path / "frames", tmp_path / "audio").examples] == [str(i) for i in range(50)]
    qf.write_text(json.dumps(rows)[:-100])
    seen = []
    with pytest.raises(DatasetFormatError, match=r"avqa-test\.json: not valid JSON"):
        with stream_rows(lambda e: seen.append(e.id)):
            read_music_avqa(qf, tmp_path / "frames", tmp_path / "audio", skip_bad=True)
    assert 0 < len(seen) < 50  # streamed up to the cut, then the error


def test_media_checks_are_remembered_for_a_bounded_number_of_paths(tmp_path, monkeypatch):
    for k in range(4):
        _jpg(tmp_path / f"{k}.jpg")
    checked = []
    real = _Media._check_image
    monkeypatch.setattr(_Media, "_check_image", lambda self, p: checked.append(p.name) or real(self, p))
    media = _Media(verify=True, max_entries=2)
    for k in (0, 0, 1, 0, 2, 0, 1, 3):
        assert media.image(tmp_path / f"{k}.jpg") == str(tmp_path / f"{k}.jpg")
    # 0 stays (used again and again); 1 is forgotten when 2 comes, so checked again
    assert checked == ["0.jpg", "1.jpg", "2.jpg", "1.jpg", "3.jpg"]
    assert len(media._cache) == 2
