"""The VGGSound reader: classification records, the split filter, malformed rows, and presence questions."""
from __future__ import annotations

import pytest

from safe.data.readers import read_vggsound
from tests.data.test_readers import _csv, _jpg, _junk, _raises, _wav


@pytest.fixture
def vggsound(tmp_path):
    audio = tmp_path / "audio"
    _wav(audio / "---g-f_I2yQ_000001.wav")
    _wav(audio / "--0PQM4-hqg_000030.wav")
    rows = [["---g-f_I2yQ", "1", "people marching", "test"],
            ["--0PQM4-hqg", "30", "waterfall burbling", "train"],
            ["--56QUhyDQM", "185", "playing tennis", "train"]]  # audio not downloaded
    return _csv(tmp_path / "vggsound.csv", rows), audio, rows


def test_vggsound_records_and_split(vggsound, tmp_path):
    cf, audio, _ = vggsound
    (test_ex,) = read_vggsound(cf, audio, split="test").examples
    assert (test_ex.id, test_ex.question, test_ex.answers) == ("---g-f_I2yQ_000001", "What sound is this?", ("people marching",))
    assert test_ex.audio == str(audio / "---g-f_I2yQ_000001.wav") and test_ex.image is None
    assert test_ex.needs_audio and test_ex.family == "classification" and test_ex.meta["split"] == "test"

    res = read_vggsound(cf, audio, split="train", skip_bad=True)
    assert [e.id for e in res.examples] == ["--0PQM4-hqg_000030"] and res.skipped == 1
    assert "row 2" in res.problems[0] and "--56QUhyDQM_000185.wav" in res.problems[0]
    _raises(lambda: read_vggsound(cf, audio), str(cf), "row 2", "line 3", "'--56QUhyDQM'", "not found")
    with pytest.raises(ValueError, match="splits present"):
        read_vggsound(cf, audio, split="validation")

    frames = tmp_path / "frames"
    _jpg(frames / "---g-f_I2yQ_000001" / "0001.jpg")
    ex = read_vggsound(cf, audio, split="test", frames_dir=frames).examples[0]
    assert ex.image == str(frames / "---g-f_I2yQ_000001" / "0001.jpg")


def test_vggsound_presence_questions(vggsound):
    """questions='yes_no': per clip "Is there <its label>?" -> yes and "Is there <another label>?" -> no, the
    other label drawn from the file's labels, the same on every read; 'both' keeps the classification row first."""
    cf, audio, _ = vggsound
    res = read_vggsound(cf, audio, questions="yes_no", skip_bad=True)
    by_id = {e.id: e for e in res.examples}
    assert list(by_id) == ["---g-f_I2yQ_000001:yes", "---g-f_I2yQ_000001:no",
                           "--0PQM4-hqg_000030:yes", "--0PQM4-hqg_000030:no"] and res.skipped == 1
    yes, no = by_id["---g-f_I2yQ_000001:yes"], by_id["---g-f_I2yQ_000001:no"]
    assert (yes.question, yes.answers, yes.family) == ("Is there people marching?", ("yes",), "presence")
    assert no.answers == ("no",) and no.meta["asked_label"] in {"waterfall burbling", "playing tennis"}
    assert no.question == f"Is there {no.meta['asked_label']}?" and no.needs_audio and no.audio == yes.audio
    again = read_vggsound(cf, audio, questions="yes_no", skip_bad=True).examples
    assert [(e.id, e.question) for e in again] == [(e.id, e.question) for e in res.examples]

    both = read_vggsound(cf, audio, questions="both", skip_bad=True).examples
    assert [e.family for e in both[:3]] == ["classification", "presence", "presence"]
    assert [e.id for e in read_vggsound(cf, audio, questions="label", skip_bad=True).examples] == \
        ["---g-f_I2yQ_000001", "--0PQM4-hqg_000030"]
    with pytest.raises(ValueError, match="at least two distinct labels"):
        read_vggsound(cf, audio, split="test", questions="yes_no")  # one label in the test split
    with pytest.raises(ValueError, match="questions must be one of"):
        read_vggsound(cf, audio, questions="presence")


def test_vggsound_malformed_rows(vggsound):
    cf, audio, rows = vggsound
    rows[0] = ["---g-f_I2yQ", "1", "people", "marching", "test"]  # unquoted comma in the label
    _csv(cf, rows)
    _raises(lambda: read_vggsound(cf, audio, split="test"), "row 0", "expected 4 fields")
    rows[0] = ["---g-f_I2yQ", "1.5", "people marching", "test"]
    _csv(cf, rows)
    _raises(lambda: read_vggsound(cf, audio, split="test"), "row 0", "start_seconds")
    rows[0] = ["---g-f_I2yQ", "1", "people marching", "test"]
    _csv(cf, rows)
    _junk(audio / "---g-f_I2yQ_000001.wav")
    _raises(lambda: read_vggsound(cf, audio, split="test"), "row 0", "---g-f_I2yQ_000001.wav")
