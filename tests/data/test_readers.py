"""Dataset readers on tiny fixtures written in each dataset's published format."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safe.data.readers import (
    READERS,
    DatasetFormatError,
    ReadResult,
    read_audiocaps,
    read_avqa,
    read_clotho,
    read_dataset,
    read_gqa,
    read_music_avqa,
    read_vggsound,
    read_vqav2,
)
from safe.processing.audio import write_wav

# --------------------------------------------------------------------------- fixture helpers


def _jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, "JPEG")
    return path


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.linspace(-0.5, 0.5, 160), 16000)
    return path


def _junk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a media file")
    return path


def _json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _raises(fn, *fragments: str) -> str:
    """Call fn, expect DatasetFormatError, check every fragment is in the message."""
    with pytest.raises(DatasetFormatError) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- VQAv2

TEN = ["red", "red", "dark red", "red", "maroon", "red", "red", "red", "crimson", "red"]


@pytest.fixture
def vqav2(tmp_path):
    img_dir = tmp_path / "val2014"
    _jpg(img_dir / "COCO_val2014_000000000042.jpg")
    _jpg(img_dir / "COCO_val2014_000000000007.jpg")
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
            {"image_id": 7, "question": "Is it raining?", "question_id": 70},
        ],
    }
    annotations = {
        "annotations": [
            {"question_id": 420, "image_id": 42, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(TEN)],
             "multiple_choice_answer": "red", "question_type": "what color is the", "answer_type": "other"},
            {"question_id": 70, "image_id": 7, "answers": [{"answer": "no"}] * 10,
             "multiple_choice_answer": "no", "question_type": "is it", "answer_type": "yes/no"},
        ]
    }
    qf = _json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    af = _json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations)
    return qf, af, img_dir, questions, annotations


def test_vqav2_records(vqav2):
    qf, af, img_dir, _, _ = vqav2
    res = read_vqav2(qf, af, img_dir)
    assert isinstance(res, ReadResult) and res.skipped == 0 and res.problems == []
    a, b = res.examples
    assert a.id == "420" and a.task == "vqav2" and a.question == "What color is the bus?"
    assert a.answers == ("red", *TEN) and a.answer == "red"
    assert a.family == "other" and b.family == "yes/no"
    assert a.image == str(img_dir / "COCO_val2014_000000000042.jpg") and Path(a.image).is_absolute()
    assert a.audio is None and a.needs_audio is False
    assert a.meta["question_type"] == "what color is the"


def test_vqav2_family_falls_back_to_question_type_and_subtype_override(vqav2, tmp_path):
    qf, af, img_dir, questions, annotations = vqav2
    del questions["data_subtype"]
    for ann in annotations["annotations"]:
        del ann["answer_type"]
    _json(qf, questions)
    _json(af, annotations)
    _raises(lambda: read_vqav2(qf, af, img_dir), str(qf), "data_subtype")
    res = read_vqav2(qf, af, img_dir, image_subtype="val2014")
    assert [e.family for e in res.examples] == ["what color is the", "is it"]


def test_vqav2_bad_inputs(vqav2, tmp_path):
    qf, af, img_dir, questions, annotations = vqav2
    _raises(lambda: read_vqav2(tmp_path / "nope.json", af, img_dir), "nope.json", "not found")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    _raises(lambda: read_vqav2(qf, broken, img_dir), str(broken), "not valid JSON")

    # malformed row: question text missing
    del questions["questions"][1]["question"]
    _json(qf, questions)
    _raises(lambda: read_vqav2(qf, af, img_dir), str(qf), "row 1", "id 70", "'question'")
    res = read_vqav2(qf, af, img_dir, skip_bad=True)
    assert [e.id for e in res.examples] == ["420"] and res.skipped == 1 and "row 1" in res.problems[0]


def test_vqav2_bad_annotation_and_media(vqav2):
    qf, af, img_dir, questions, annotations = vqav2
    annotations["annotations"][0]["multiple_choice_answer"] = 3
    _json(af, annotations)
    _raises(lambda: read_vqav2(qf, af, img_dir), str(qf), str(af), "row 0", "id 420", "multiple_choice_answer")
    annotations["annotations"].pop(0)
    _json(af, annotations)
    _raises(lambda: read_vqav2(qf, af, img_dir), "id 420", "no annotation")

    (img_dir / "COCO_val2014_000000000007.jpg").unlink()
    res = read_vqav2(qf, af, img_dir, skip_bad=True)  # 420: no annotation; 70: image missing
    assert res.examples == [] and res.skipped == 2
    assert any("COCO_val2014_000000000007.jpg" in p and "not found" in p for p in res.problems)


def test_vqav2_corrupt_image(vqav2):
    qf, af, img_dir, _, _ = vqav2
    _junk(img_dir / "COCO_val2014_000000000042.jpg")
    _raises(lambda: read_vqav2(qf, af, img_dir), str(qf), "row 0", "id 420", "unreadable image")
    # existence-only mode accepts the file
    assert len(read_vqav2(qf, af, img_dir, verify_media=False).examples) == 2


# --------------------------------------------------------------------------- GQA


@pytest.fixture
def gqa(tmp_path):
    img_dir = tmp_path / "images"
    _jpg(img_dir / "2354786.jpg")
    _jpg(img_dir / "n161313.jpg")
    questions = {
        "02930152": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes", "fullAnswer": "Yes, the sky is dark.",
                     "isBalanced": True, "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
        "07333408": {"imageId": "n161313", "question": "What is on the table?", "answer": "cup",
                     "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    }
    return _json(tmp_path / "val_balanced_questions.json", questions), img_dir, questions


def test_gqa_records(gqa):
    qf, img_dir, _ = gqa
    res = read_gqa(qf, img_dir)
    a, b = res.examples
    assert (a.id, a.question, a.answers, a.family) == ("02930152", "Is the sky dark?", ("yes",), "verifyAttr")
    assert b.family == "relS" and b.image == str(img_dir / "n161313.jpg")
    assert a.needs_audio is False and a.audio is None and a.task == "gqa"
    assert a.meta["types"]["semantic"] == "attr" and a.meta["full_answer"] == "Yes, the sky is dark."


def test_gqa_bad_inputs(gqa):
    qf, img_dir, questions = gqa
    del questions["07333408"]["answer"]
    _json(qf, questions)
    _raises(lambda: read_gqa(qf, img_dir), str(qf), "row 1", "'07333408'", "'answer'")
    res = read_gqa(qf, img_dir, skip_bad=True)
    assert len(res.examples) == 1 and res.skipped == 1
    (img_dir / "2354786.jpg").unlink()
    _raises(lambda: read_gqa(qf, img_dir), "row 0", "2354786.jpg", "not found")
    _json(qf, [1, 2])
    _raises(lambda: read_gqa(qf, img_dir), str(qf), "keyed by question id")


# --------------------------------------------------------------------------- MUSIC-AVQA


def _mavqa_row(qid, vid, types, content, values, answer="yes"):
    return {"video_id": vid, "question_id": qid, "type": json.dumps(types), "question_content": content,
            "templ_values": json.dumps(values), "question_deleted": 0, "anser": answer}


@pytest.fixture
def music_avqa(tmp_path):
    frames, audio = tmp_path / "frames", tmp_path / "audio"
    _jpg(frames / "00000272.jpg")
    _jpg(frames / "00000823" / "000002.jpg")
    _jpg(frames / "00000823" / "000001.jpg")
    _wav(audio / "00000272.wav")
    _wav(audio / "00000823.wav")
    rows = [
        _mavqa_row(7, "00000272", ["Audio", "Counting"], "How many <Object> are sounding?", ["cello"], "two"),
        _mavqa_row(8, "00000823", ["Visual", "Location"], "Is the <Object> on the <LR>?", ["piano", "left"], "yes"),
        _mavqa_row(9, "00000823", ["Audio-Visual", "Temporal"], "Which is the first sounding instrument?", [], "piano"),
    ]
    return _json(tmp_path / "avqa-test.json", rows), frames, audio, rows


def test_music_avqa_records(music_avqa):
    qf, frames, audio, _ = music_avqa
    a, b, c = read_music_avqa(qf, frames, audio).examples
    assert a.question == "How many cello are sounding?" and a.answers == ("two",)
    assert b.question == "Is the piano on the left?"
    assert c.question == "Which is the first sounding instrument?"
    assert [e.needs_audio for e in (a, b, c)] == [True, False, True]
    assert [e.family for e in (a, b, c)] == ["audio/counting", "visual/location", "audio-visual/temporal"]
    assert a.image == str(frames / "00000272.jpg")
    assert b.image == str(frames / "00000823" / "000001.jpg")  # first in sorted order
    assert b.audio == str(audio / "00000823.wav") and a.id == "7" and a.task == "music_avqa"
    assert a.meta["video_id"] == "00000272" and b.meta["templ_values"] == ["piano", "left"]


def test_music_avqa_accepts_python_repr_lists(music_avqa):
    qf, frames, audio, rows = music_avqa
    rows[1]["templ_values"] = "['piano', 'left']"
    rows[1]["type"] = ["Visual", "Location"]
    _json(qf, rows)
    assert read_music_avqa(qf, frames, audio).examples[1].question == "Is the piano on the left?"


def test_music_avqa_malformed_rows(music_avqa):
    qf, frames, audio, rows = music_avqa
    bad = [dict(r) for r in rows]
    bad[1]["type"] = "[Audio, oops"
    _json(qf, bad)
    _raises(lambda: read_music_avqa(qf, frames, audio), str(qf), "row 1", "id 8", "'type'")

    bad = [dict(r) for r in rows]
    bad[0]["templ_values"] = json.dumps([])
    _json(qf, bad)
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 0", "id 7", "placeholder")

    bad = [dict(r) for r in rows]
    del bad[2]["anser"]
    _json(qf, bad)
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 2", "id 9", "anser")

    bad = [dict(r) for r in rows]
    bad[2]["type"] = json.dumps(["Smell", "Counting"])
    _json(qf, bad)
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 2", "unknown modality")

    bad = [dict(r) for r in rows]
    bad[2]["question_id"] = 7
    _json(qf, bad)
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 2", "duplicate id")


def test_music_avqa_missing_and_corrupt_media(music_avqa):
    qf, frames, audio, _ = music_avqa
    (audio / "00000272.wav").unlink()
    _raises(lambda: read_music_avqa(qf, frames, audio), str(qf), "row 0", "id 7", "00000272.wav", "not found")
    _junk(audio / "00000823.wav")
    res = read_music_avqa(qf, frames, audio, skip_bad=True)
    assert res.examples == [] and res.skipped == 3 and len(res.problems) == 3
    assert "00000823.wav" in res.problems[1] and "row 1" in res.problems[1]

    _wav(audio / "00000272.wav")
    _wav(audio / "00000823.wav")
    (frames / "00000272.jpg").unlink()
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 0", "no frame for '00000272'")
    _raises(lambda: read_music_avqa(qf, frames, audio / "missing"), "audio_dir", "not a directory")


def test_music_avqa_empty_wav_is_an_error(music_avqa):
    qf, frames, audio, _ = music_avqa
    write_wav(audio / "00000272.wav", np.zeros(0), 16000)
    _raises(lambda: read_music_avqa(qf, frames, audio), "row 0", "no samples")


# --------------------------------------------------------------------------- AVQA


@pytest.fixture
def avqa(tmp_path):
    frames, audio = tmp_path / "frames", tmp_path / "audio"
    for name in ("-HG3Omg_89c_000030", "0012y1s1bJI_000350"):
        _jpg(frames / f"{name}.jpg")
        _wav(audio / f"{name}.wav")
    rows = [
        {"id": 183, "video_id": 341, "video_name": "-HG3Omg_89c_000030", "question_text": "What happened in the video?",
         "multi_choice": ["motorboat", "Sailboat set sail", "car", "train"], "answer": 1,
         "question_relation": "Both", "question_type": "Happening"},
        {"id": 184, "video_id": 342, "video_name": "0012y1s1bJI_000350", "question_text": "Where is the dog?",
         "multi_choice": ["park", "beach", None, "room"], "answer": 3,
         "question_relation": "View", "question_type": "Where"},
        {"id": 185, "video_id": 342, "video_name": "0012y1s1bJI_000350", "question_text": "Where does the sound come from?",
         "multi_choice": ["dog", "cat", "bird", "man"], "answer": "0", "question_type": "Come From"},
    ]
    return _json(tmp_path / "val_qa.json", rows), frames, audio, rows


def test_avqa_records(avqa):
    qf, frames, audio, _ = avqa
    a, b, c = read_avqa(qf, frames, audio).examples
    assert a.answers == ("Sailboat set sail",) and a.question == "What happened in the video?"
    assert [e.needs_audio for e in (a, b, c)] == [True, False, True]
    assert [e.family for e in (a, b, c)] == ["happening", "where", "come_from"]
    assert b.answers == ("room",) and c.answers == ("dog",)
    assert a.image == str(frames / "-HG3Omg_89c_000030.jpg") and a.audio == str(audio / "-HG3Omg_89c_000030.wav")
    assert a.meta["choices"][1] == "Sailboat set sail" and a.meta["answer_index"] == 1 and a.id == "183"
    with_choices = read_avqa(qf, frames, audio, include_choices=True).examples
    assert with_choices[0].question == "What happened in the video? Choices: motorboat; Sailboat set sail; car; train."


def test_avqa_bad_inputs(avqa):
    qf, frames, audio, rows = avqa
    rows[0]["answer"] = 4
    _json(qf, rows)
    _raises(lambda: read_avqa(qf, frames, audio), str(qf), "row 0", "id 183", "out of range")
    rows[0]["answer"] = 1
    rows[1]["answer"] = 2  # the null choice
    _json(qf, rows)
    _raises(lambda: read_avqa(qf, frames, audio), "row 1", "id 184", "null")
    rows[1]["answer"] = True
    _json(qf, rows)
    _raises(lambda: read_avqa(qf, frames, audio), "row 1", "boolean")
    rows[1]["answer"] = 3
    del rows[2]["question_text"]
    _json(qf, rows)
    res = read_avqa(qf, frames, audio, skip_bad=True)
    assert [e.id for e in res.examples] == ["183", "184"] and res.skipped == 1 and "question_text" in res.problems[0]
    _junk(audio / "-HG3Omg_89c_000030.wav")
    _raises(lambda: read_avqa(qf, frames, audio), "row 0", "id 183", "-HG3Omg_89c_000030.wav")
    _json(qf, {"not": "a list"})
    _raises(lambda: read_avqa(qf, frames, audio), str(qf), "JSON list")


# --------------------------------------------------------------------------- AudioCaps

AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


@pytest.fixture
def audiocaps(tmp_path):
    audio = tmp_path / "audio"
    _wav(audio / "--0w1YA1Hm4_30.wav")
    _wav(audio / "-1nilez17Dg_30.wav")
    rows = [AUDIOCAPS_HEADER,
            ["91139", "--0w1YA1Hm4", "30", "A vehicle driving as a man and woman are talking and laughing"],
            ["91140", "-1nilez17Dg", "30", "Wind blows, then a dog barks, loud"],
            ["91141", "-1nilez17Dg", "30", "A dog barking while the wind blows"]]
    return _csv(tmp_path / "test.csv", rows), audio, rows


def test_audiocaps_records(audiocaps, tmp_path):
    cf, audio, _ = audiocaps
    a, b, c = read_audiocaps(cf, audio).examples
    assert (a.id, a.question, a.answers) == ("91139", "Describe the sound.", ("A vehicle driving as a man and woman are talking and laughing",))
    assert b.answers == ("Wind blows, then a dog barks, loud",)  # quoted comma kept
    assert a.audio == str(audio / "--0w1YA1Hm4_30.wav") and a.image is None
    assert a.needs_audio and a.family == "caption" and a.task == "audiocaps"
    assert c.meta == {"audiocap_id": "91141", "youtube_id": "-1nilez17Dg", "start_time": 30}

    frames = tmp_path / "frames"
    _jpg(frames / "--0w1YA1Hm4_30.jpg")
    _jpg(frames / "-1nilez17Dg_30.jpg")
    assert read_audiocaps(cf, audio, frames_dir=frames).examples[0].image == str(frames / "--0w1YA1Hm4_30.jpg")


def test_audiocaps_audio_name_template(audiocaps):
    cf, audio, _ = audiocaps
    for k in ("91139", "91140", "91141"):
        _wav(audio / f"{k}.wav")
    res = read_audiocaps(cf, audio, audio_name="{audiocap_id}.wav")
    assert [Path(e.audio).name for e in res.examples] == ["91139.wav", "91140.wav", "91141.wav"]
    with pytest.raises(ValueError, match="audio_name"):
        read_audiocaps(cf, audio, audio_name="{ytid}.wav")


def test_audiocaps_bad_inputs(audiocaps, tmp_path):
    cf, audio, rows = audiocaps
    _raises(lambda: read_audiocaps(tmp_path / "train.csv", audio), "train.csv", "not found")
    rows[2][2] = "thirty"
    _csv(cf, rows)
    _raises(lambda: read_audiocaps(cf, audio), str(cf), "row 1", "line 3", "'91140'", "start_time")
    rows[2][2] = "30"
    rows[3] = ["91141", "-1nilez17Dg", "30"]
    _csv(cf, rows)
    _raises(lambda: read_audiocaps(cf, audio), "row 2", "'91141'", "caption")
    rows[3] = ["91141", "-1nilez17Dg", "30", "fine"]
    _csv(cf, rows)
    _junk(audio / "-1nilez17Dg_30.wav")
    res = read_audiocaps(cf, audio, skip_bad=True)
    assert [e.id for e in res.examples] == ["91139"] and res.skipped == 2
    assert "unreadable audio" in res.problems[0] or "cannot read audio" in res.problems[0]
    _csv(cf, [["id", "caption"], ["1", "x"]])
    _raises(lambda: read_audiocaps(cf, audio), str(cf), "missing columns")


# --------------------------------------------------------------------------- Clotho

CLOTHO_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]


@pytest.fixture
def clotho(tmp_path):
    audio = tmp_path / "evaluation"
    _wav(audio / "Santa Motor.wav")
    _wav(audio / "river, flowing.wav")
    rows = [CLOTHO_HEADER,
            ["Santa Motor.wav", "A machine whines.", "An engine hums.", "A motor runs, loudly.", "Machinery whirs.", "A machine runs."],
            ["river, flowing.wav", "Water flows.", "A river runs.", "Water splashes.", "A stream gurgles.", "Water rushes by."]]
    return _csv(tmp_path / "clotho_captions_evaluation.csv", rows), audio, rows


def test_clotho_records(clotho):
    cf, audio, rows = clotho
    a, b = read_clotho(cf, audio).examples
    assert a.id == "Santa Motor.wav" and a.answers == tuple(rows[1][1:]) and len(a.answers) == 5
    assert b.audio == str(audio / "river, flowing.wav") and b.image is None
    assert a.needs_audio and a.family == "caption" and a.question == "Describe the sound." and a.task == "clotho"


def test_clotho_bad_inputs(clotho):
    cf, audio, rows = clotho
    rows[2][3] = ""
    _csv(cf, rows)
    _raises(lambda: read_clotho(cf, audio), str(cf), "row 1", "'river, flowing.wav'", "caption_3")
    rows[2][3] = "A river runs."
    _csv(cf, rows)
    _junk(audio / "Santa Motor.wav")
    _raises(lambda: read_clotho(cf, audio), "row 0", "'Santa Motor.wav'", "Santa Motor.wav")
    (audio / "river, flowing.wav").unlink()
    res = read_clotho(cf, audio, skip_bad=True)
    assert res.examples == [] and res.skipped == 2 and "not found" in res.problems[1]
    _csv(cf, [CLOTHO_HEADER[:4], ["a.wav", "x", "y", "z"]])
    _raises(lambda: read_clotho(cf, audio), "missing columns", "caption_4")


# --------------------------------------------------------------------------- VGGSound: test_readers_vggsound.py


# --------------------------------------------------------------------------- registry and paths


def test_registry_names_and_unknown_dataset():
    assert set(READERS) == {"vqav2", "gqa", "music_avqa", "avqa", "audiocaps", "clotho", "vggsound"}
    with pytest.raises(ValueError) as info:
        read_dataset("coco_captions")
    msg = str(info.value)
    assert "coco_captions" in msg and all(name in msg for name in READERS)


def test_read_dataset_dispatches_and_paths_are_absolute(music_avqa, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    res = read_dataset("MUSIC-AVQA", questions_json="avqa-test.json", frames_dir="frames", audio_dir="audio")
    assert len(res.examples) == 3
    for ex in res.examples:
        assert Path(ex.image).is_absolute() and Path(ex.audio).is_absolute()
        assert Path(ex.image).is_file() and Path(ex.audio).is_file()
    # records survive the JSON round trip the rest of the pipeline relies on
    ex = res.examples[0]
    assert type(ex).from_dict(json.loads(json.dumps(ex.to_dict()))) == ex


def test_problem_list_is_capped(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = [[f"vid{i:04d}", "0", "dog", "train"] for i in range(80)]
    cf = _csv(tmp_path / "vggsound.csv", rows)
    res = read_vggsound(cf, audio, skip_bad=True)
    assert res.examples == [] and res.skipped == 80 and len(res.problems) == 50
