"""safe.pipeline and `safe predict` on a short trained run: one row, batches, the policy deciding, the
use_audio override, rows without audio bit-exact to the base on the same batch, and one-line errors
(exit 2) that name the bad file."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import safe
from safe import bench as synth
from safe.cli import main
from safe.policy.features import StateSpec
from safe.policy.network import GateMLP
from safe.policy.runtime import AudioPolicy
from safe.processing.audio import write_wav


@pytest.fixture(scope="module")
def run(trained_run):
    bench, base, run = trained_run
    test = synth.load_split(bench, "test")
    return run, [e for e in test if e.needs_audio][:3] + [e for e in test if not e.needs_audio][:3]


def test_pipeline_one_row_and_a_batch(run):
    run_dir, rows = run
    p = safe.pipeline(run_dir)
    one = p(image=rows[0].image, question=rows[0].question, audio=rows[0].audio)
    assert set(one) == {"answer", "used_audio", "audio_probability", "modalities"} and one["modalities"] == ["audio"]
    assert isinstance(one["answer"], str) and one["used_audio"] is True and one["audio_probability"] is None
    batch = p(image=[e.image for e in rows], question=[e.question for e in rows],
              audio=[rows[0].audio, None, rows[2].audio, None, None, rows[5].audio])
    assert [b["used_audio"] for b in batch] == [True, False, True, False, False, True]
    assert batch[0] == one  # the same row alone or in a batch
    off = p(image=rows[0].image, question=rows[0].question, audio=rows[0].audio, use_audio=False)
    assert off["used_audio"] is False
    with pytest.raises(ValueError, match=r"use_audio=True for row\(s\) \[1\]"):
        p(image=[e.image for e in rows[:2]], question=[e.question for e in rows[:2]], audio=[rows[0].audio, None],
          use_audio=True)


def test_a_saved_processor_is_the_only_prompt_format_built(run, monkeypatch):
    """A run whose checkpoint holds its processor loads the weights only: the tokenizer, image processor and
    feature extractor are read once, from the processor's files (not a second time from the base's folders)."""
    import safe.inference.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a second prompt format and audio front end were built")

    run_dir, rows = run
    monkeypatch.setattr(loading, "build_formats", refuse)
    p = safe.pipeline(run_dir)
    assert isinstance(p(image=rows[0].image, question=rows[0].question, audio=rows[0].audio)["answer"], str)


def test_rows_without_audio_are_bit_exact_to_the_base(run):
    run_dir, rows = run
    p = safe.pipeline(run_dir)
    model = p.model
    audio = [rows[0].audio, None, rows[2].audio, None, rows[4].audio, None]
    inputs = p.processor(text=[e.question for e in rows], images=[e.image for e in rows], audio=audio)
    inputs.pop("audio_preview")
    vl = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    gen = dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        ids = model.generate(**inputs, **gen)
        logits = model(**inputs).logits
        with model.hooks_detached() as base:
            base_ids = base.generate(**vl, **gen)
            base_logits = base(**vl).logits
    closed = ~inputs["audio_mask"]
    assert torch.equal(ids[closed], base_ids[closed]) and torch.equal(logits[closed], base_logits[closed])
    assert not torch.equal(logits[~closed], base_logits[~closed])  # the audio rows did use audio
    answers = p(image=[e.image for e in rows], question=[e.question for e in rows], audio=audio)
    base_answers = p.processor.decode(base_ids, vl["input_ids"].shape[1])
    assert [a["answer"] for a, c in zip(answers, closed) if c] == [b for b, c in zip(base_answers, closed) if c]


def test_the_policy_decides_only_among_rows_with_audio(run, tmp_path):
    run_dir, rows = run
    p = safe.pipeline(run_dir)
    h = p.model.hidden_size
    gate = GateMLP(StateSpec(h, h, confidence_dim=0).dim, 4)
    with torch.no_grad():
        gate.net[2].bias.fill_(10.0)  # P(use audio) ~ 1 on every row
    p.model.attach_policy(AudioPolicy(StateSpec(h, h, confidence_dim=0), "mlp", 4, net=gate))
    ckpt = p.model.save_pretrained(tmp_path / "policy")
    p.processor.save_pretrained(ckpt)
    q = safe.pipeline(ckpt)  # a checkpoint directory: base and encoder paths come from its processor
    assert q.model.policy is not None
    audio = [rows[0].audio, None, rows[2].audio, None, None, None]
    out = q(image=[e.image for e in rows], question=[e.question for e in rows], audio=audio)
    assert [o["used_audio"] for o in out] == [True, False, True, False, False, False]
    assert [o["audio_probability"] is None for o in out] == [False, True, False, True, True, True]
    assert out[0]["audio_probability"] > 0.99
    forced = q(image=[e.image for e in rows], question=[e.question for e in rows], audio=audio, use_audio=False)
    plain = p(image=[e.image for e in rows], question=[e.question for e in rows], use_audio=False)
    assert [f["used_audio"] for f in forced] == [False] * 6 and [f["answer"] for f in forced] == [x["answer"] for x in plain]


def _predict(capsys, *argv):
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_safe_predict_end_to_end(run, tmp_path, capsys):
    run_dir, rows = run
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--image", rows[0].image, "--question", rows[0].question,
                              "--audio-file", rows[0].audio)
    assert code == 0 and err == ""
    one = json.loads(out)
    assert one == safe.pipeline(run_dir)(image=rows[0].image, question=rows[0].question, audio=rows[0].audio)
    # JSON lines: relative paths from the file's folder, use_audio per row, ids echoed, order kept
    data = tmp_path / "in"
    data.mkdir()
    x, rate = sf.read(rows[0].audio, dtype="float32")
    sf.write(str(data / "clip.flac"), np.stack([x, x], 1), rate)
    lines = [{"id": "a", "question": rows[0].question, "image": rows[0].image, "audio": "clip.flac"},
             {"id": "b", "question": rows[3].question, "image": rows[3].image},
             {"id": "c", "question": rows[1].question, "image": rows[1].image, "audio": rows[1].audio,
              "use_audio": False}]
    (data / "q.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--input", data / "q.jsonl", "--batch-size", 2)
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"] and [g["used_audio"] for g in got] == [True, False, False]
    assert got[0]["answer"] == one["answer"]  # the FLAC stereo copy answers as the WAV


def test_safe_predict_bad_inputs_exit_2_naming_the_file(run, tmp_path, capsys):
    run_dir, rows = run
    img, q = rows[0].image, rows[0].question
    write_wav(tmp_path / "header.wav", np.zeros(0), 16000)
    (tmp_path / "text.wav").write_text("not audio\n" * 10)
    sf.write(str(tmp_path / "nan.wav"), np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    write_wav(tmp_path / "ok.wav", np.zeros(1600), 16000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:44 + 301])
    cases = {"missing.wav": "not found", "header.wav": "no samples", "text.wav": "cannot read audio",
             "nan.wav": "NaN", "cut.wav": "cut short"}
    for name, why in cases.items():
        code, out, err = _predict(capsys, "--run-dir", run_dir, "--image", img, "--question", q,
                                  "--audio-file", tmp_path / name)
        assert code == 2 and out == "" and name in err and why in err, (name, err)
        assert err.count("\n") == 1 and err.startswith("safe predict: error:")
    write_wav(tmp_path / "long.wav", np.zeros(3 * 16000), 16000)  # 3 s; the built-in encoder reads 1 s
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--image", img, "--question", q, "--audio-file",
                              tmp_path / "long.wav", "--long-audio", "error")
    assert code == 2 and out == "" and "long.wav" in err and "3.0 s" in err
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--image", img, "--question", q, "--audio-file",
                              tmp_path / "long.wav")
    assert code == 0 and json.loads(out)["used_audio"] and "long.wav" in err and "first 1 s" in err
    code, _, err = _predict(capsys, "--run-dir", run_dir, "--image", tmp_path / "none.png", "--question", q)
    assert code == 2 and "none.png" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": q, "image": img}) + "\n" + json.dumps({"question": q, "audio": "nan.wav"}))
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--input", bad)
    assert code == 2 and out == "" and "bad.jsonl:2" in err and "nan.wav" in err
    bad.write_text("{not json\n")
    code, _, err = _predict(capsys, "--run-dir", run_dir, "--input", bad)
    assert code == 2 and "bad.jsonl:1" in err
    code, _, err = _predict(capsys, "--run-dir", tmp_path / "nowhere", "--question", q)
    assert code == 2 and "nowhere" in err and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_base_loads_with_the_attention_implementation_asked_for(run, attn):
    """--attn-implementation reaches the frozen base (pipeline / safe predict / the training stages share
    load_frozen), and the answers do not depend on it here."""
    run_dir, rows = run
    p = safe.pipeline(run_dir, load_options={"attn_implementation": attn})
    assert p.model.base_model.config.text_config._attn_implementation == attn
    ref = safe.pipeline(run_dir)(image=rows[3].image, question=rows[3].question, use_audio=False)
    assert p(image=rows[3].image, question=rows[3].question, use_audio=False) == ref


@pytest.mark.parametrize("command", [["train"], ["policy", "train"], ["eval"], ["ablate"], ["predict", "--question", "q"]])
def test_a_bad_loading_flag_is_refused_naming_it_before_anything_runs(command, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*command, "--run-dir", str(run_dir), "--attn-implementation", "flash"]) == 2
    assert "--attn-implementation must be sdpa or eager, got 'flash'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_predict_and_serve_refuse_a_model_the_run_was_not_trained_with(trained_run, tmp_path, capsys):
    """A run directory's run.json names its base and encoder: `safe predict` answers with them and refuses
    another --base or --audio with one line naming the flag, before anything loads (serve shares the check)."""
    import shutil

    from safe.stages.common import record_run

    bench, base, trained = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    record_run(run_dir, base=base, audio=None, data=bench, data_fingerprint="", recipe={})
    q = synth.load_split(bench, "test")[0]
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--image", q.image, "--question", q.question)
    assert code == 0, err
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--question", q.question, "--base", tmp_path)
    assert code == 2 and out == "" and "--base" in err and "trained on" in err
    code, out, err = _predict(capsys, "--run-dir", run_dir, "--question", q.question, "--audio", tmp_path)
    assert code == 2 and "--audio" in err and "the built-in folder's own encoder" in err
