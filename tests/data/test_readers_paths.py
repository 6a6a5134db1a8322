"""Readers open only files inside their media folder: an id with ``..``, an absolute id, or a symlink
whose target lies outside is a skipped row whose reason says so, never a file read from elsewhere."""
from __future__ import annotations

import os

from safe.data.readers import read_clotho, read_gqa
from tests.data.test_readers import CLOTHO_HEADER, _csv, _jpg, _json, _wav


def test_clotho_ids_cannot_leave_the_audio_folder(tmp_path):
    audio = tmp_path / "data" / "evaluation"
    _wav(audio / "good.wav")
    outside = _wav(tmp_path / "secret.wav")
    os.symlink(outside, audio / "link.wav")
    caps = ["a", "b", "c", "d", "e"]
    rows = [CLOTHO_HEADER, ["good.wav", *caps], ["../../secret.wav", *caps], [str(outside), *caps],
            ["link.wav", *caps]]
    res = read_clotho(_csv(tmp_path / "captions.csv", rows), audio, skip_bad=True)
    assert [e.id for e in res.examples] == ["good.wav"]
    assert res.skipped == 3
    text = " ".join(res.problems)
    assert text.count("leads out of the media folder") == 2 and "absolute path" in text


def test_gqa_image_ids_cannot_leave_the_image_folder(tmp_path):
    img = tmp_path / "images"
    _jpg(img / "1.jpg")
    _jpg(tmp_path / "outside.jpg")
    types = {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}
    q = {"a": {"imageId": "1", "question": "Is it red?", "answer": "yes", "types": types},
         "b": {"imageId": "../outside", "question": "Is it red?", "answer": "yes", "types": types}}
    res = read_gqa(_json(tmp_path / "q.json", q), img, skip_bad=True)
    assert [e.id for e in res.examples] == ["a"] and res.skipped == 1
    assert "leads out" in res.problems[0]
