"""A run directory describes itself: `safe train` writes run.json (base, encoder, data and its fingerprint, the
recipe); later stages fill what they are not given from it and refuse what contradicts it."""
from dataclasses import dataclass

import pytest

from safe.stages.common import StageError, check_run_data, from_run, record_run, run_record


@dataclass
class Opts:
    run_dir: str
    base: str | None = None
    audio: str | None = None
    data: str | None = None


class Source:
    def __init__(self, fingerprint):
        self._fp = fingerprint

    def fingerprint(self):
        return self._fp


@pytest.fixture
def run(tmp_path):
    (tmp_path / "llava").mkdir()
    (tmp_path / "whisper").mkdir()
    record_run(tmp_path / "run", base=tmp_path / "llava", audio=tmp_path / "whisper", data=tmp_path / "spec.yaml",
               data_fingerprint="abc", recipe={"steps": 4})
    return tmp_path


def test_the_record_fills_what_is_not_given(run):
    got = from_run(Opts(str(run / "run")))
    assert (got.base, got.audio, got.data) == (str(run / "llava"), str(run / "whisper"), str(run / "spec.yaml"))
    assert run_record(run / "run")["recipe"] == {"steps": 4}
    # the same paths given another way (relative, with ..) are the same models
    same = from_run(Opts(str(run / "run"), base=str(run / "run" / ".." / "llava")))
    assert same.audio == str(run / "whisper")


def test_a_contradicting_model_is_refused_naming_the_flag(run):
    with pytest.raises(StageError, match="--base .*trained on .*llava"):
        from_run(Opts(str(run / "run"), base=str(run / "whisper")))
    with pytest.raises(StageError, match="--audio .*trained with .*whisper"):
        from_run(Opts(str(run / "run"), audio=str(run / "llava")))


def test_other_data_is_refused_and_a_run_without_record_is_left_alone(run):
    check_run_data(Source("abc"), run / "run")
    with pytest.raises(StageError, match="fingerprint xyz.*not what the run was trained on"):
        check_run_data(Source("xyz"), run / "run")
    bare = Opts(str(run / "elsewhere"), base="b")
    assert from_run(bare) is bare
    check_run_data(Source("xyz"), run / "elsewhere")
