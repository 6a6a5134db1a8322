"""safe verify --certificate writes what was verified on which weights; safe serve --certificate refuses
to start (exit 2, one line naming the part) on weights that differ, or on a failed certificate."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from safe.cli import main
from safe.models.certificate import CertificateError, fingerprints
from safe.serve.app import load_engine
from safe.stages.serve import ServeConfig


@pytest.fixture(scope="module")
def certified(policy_run, tmp_path_factory):
    run, _ = policy_run
    cert = tmp_path_factory.mktemp("cert") / "cert.json"
    assert main(["verify", "--run-dir", str(run), "--certificate", str(cert)]) == 0
    return run, cert


def test_certificate_names_checks_hashes_and_libraries(certified, capsys):
    run, cert_file = certified
    cert = json.loads(cert_file.read_text())
    assert cert["format"] == "safe-deployment-certificate" and cert["passed"] is True
    names = [c["name"] for c in cert["checks"]]
    assert "forward: closed rows bit-exact" in names and "verification leaves every served weight byte-identical" in names
    assert all(c["passed"] for c in cert["checks"])
    engine = load_engine(ServeConfig(run_dir=str(run), certificate=str(cert_file)))  # matches: starts
    assert cert["sha256"] == fingerprints(engine.model) and all(len(v) == 64 for v in cert["sha256"].values())
    assert cert["libraries"]["torch"] == torch.__version__ and cert["libraries"]["transformers"]
    assert cert["source"]["checkpoint"].endswith("policy")


def _serve(capsys, *argv):
    code = main(["serve", *map(str, argv)])
    return code, capsys.readouterr().err


def test_serve_refuses_other_weights_and_failed_certificates(certified, tmp_path, capsys):
    run, cert_file = certified
    other = tmp_path / "other"
    shutil.copytree(run, other)
    weights = other / "checkpoints" / "policy" / "safe_weights.safetensors"
    state = load_file(str(weights))
    key = next(k for k in sorted(state) if k.startswith("projector."))
    state[key] = state[key] + 1e-3
    save_file(state, str(weights), metadata={"format": "pt"})
    code, err = _serve(capsys, "--run-dir", other, "--certificate", cert_file, "--port", 1)
    assert code == 2 and "not the verified ones" in err and "safe:" in err and "base:" not in err
    assert err.count("\n") == 1, err
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({**json.loads(cert_file.read_text()), "passed": False}))
    with pytest.raises(CertificateError, match="did not pass"):
        load_engine(ServeConfig(run_dir=str(run), certificate=str(failed)))
    code, err = _serve(capsys, "--run-dir", run, "--certificate", tmp_path / "missing.json")
    assert code == 2 and "missing.json" in err
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(CertificateError, match="junk.json"):
        load_engine(ServeConfig(run_dir=str(run), certificate=str(tmp_path / "junk.json")))


def test_serve_options_are_checked_before_loading(capsys):
    code, err = _serve(capsys, "--run-dir", "nowhere", "--max-batch", 0)
    assert code == 2 and "--max-batch" in err
    code, err = _serve(capsys, "--max-batch", 2)
    assert code == 2 and "--run-dir" in err
    code, err = _serve(capsys, "--run-dir", "nowhere")
    assert code == 2 and "nowhere" in err
