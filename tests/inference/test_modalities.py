"""safe.pipeline and `safe predict` on checkpoints carrying other modalities: a depth-primary checkpoint (as the
depth track saves) and an audio run with depth added. Rows without a modality's input are the base's (or the
audio-only model's) own answers on the same batch (torch.equal on logits and generated ids); the answers say
which modalities they used; bad maps and missing encoders are refused by name."""
import json

import numpy as np
import pytest
import torch

import safe
from safe import bench as synth
from safe.bench.depth import depth_processor
from safe.bench.vision import IMAGE_SIZE, tiny_vision_encoder
from safe.cli import main
from safe.models.config import SAFEConfig
from safe.models.loading import load_base
from safe.models.safe_model import SAFEModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _maps(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 4.0, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def modal(trained_run, tmp_path_factory):
    """(built-in base, depth encoder folder, depth-primary checkpoint, audio + depth run, audio run, examples)."""
    bench, base, run = trained_run
    root = tmp_path_factory.mktemp("modal")
    vit = tiny_vision_encoder("vit")
    vit.save_pretrained(root / "vit")
    depth_processor(IMAGE_SIZE).save_pretrained(str(root / "vit"))
    torch.manual_seed(0)
    depth = SAFEModel(load_base(str(base / "vl")), vit, SAFEConfig(fusion_layers=[-1], num_audio_tokens=4),
                      modality="depth")
    with torch.no_grad():  # a trained-looking depth branch: open gates, nonzero adapters
        for p in depth.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    depth.set_gates(1.0)
    ckpt = depth.save_pretrained(root / "depth" / "checkpoints" / "final")
    depth.remove_hooks()
    p = safe.pipeline(run)
    p.model.load_modality("depth", ckpt, vit)
    p.processor.modalities["depth"] = safe.processing.modalities.ImageModalityFrontEnd(depth_processor(IMAGE_SIZE))
    p.processor.sources["depth"] = str(root / "vit")
    both = p.model.save_pretrained(root / "both" / "checkpoints" / "final")
    p.processor.save_pretrained(both)
    p.model.remove_hooks()
    test = synth.load_split(bench, "test")
    rows = [e for e in test if e.needs_audio][:2] + [e for e in test if not e.needs_audio][:2]
    return base, root / "vit", root / "depth", root / "both", run, rows


def test_a_depth_primary_checkpoint_answers_with_depth_and_rows_without_a_map_are_the_base(modal):
    base, vit, depth_run, _, _, rows = modal
    p = safe.pipeline(depth_run, base, encoders={"depth": vit})
    assert p.modalities == ["depth"] and p.model.primary_modality == "depth"
    qs, imgs, maps = [e.question for e in rows], [e.image for e in rows], _maps(4)
    depth = [maps[0], None, maps[2], None]
    inputs = p.processor(text=qs, images=imgs, depth=depth)
    vl = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    gen = dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        extra = {"depth_features": inputs["depth_features"], "depth_mask": inputs["depth_mask"]}
        ids, logits = p.model.generate(**vl, **extra, **gen), p.model(**vl, **extra).logits
        with p.model.hooks_detached() as bare:
            base_ids, base_logits = bare.generate(**vl, **gen), bare(**vl).logits
    closed, length = ~inputs["depth_mask"], base_ids.shape[1]
    # The depth rows may answer longer: the closed rows' ids are the base's, then padding only.
    assert torch.equal(ids[closed, :length], base_ids[closed]) and ids[closed, length:].unique().numel() <= 1
    assert torch.equal(logits[closed], base_logits[closed])
    assert not torch.equal(logits[~closed], base_logits[~closed])  # the rows with a map did use it
    out = p(image=imgs, question=qs, depth=depth)
    assert [r["used_depth"] for r in out] == [True, False, True, False]
    assert [r["modalities"] for r in out] == [["depth"], [], ["depth"], []]
    base_answers = p.processor.decode(base_ids, vl["input_ids"].shape[1])
    with_depth = p.processor.decode(ids, vl["input_ids"].shape[1])
    assert [r["answer"] for r in out] == with_depth  # rows with a map answer with it, the others as the base
    assert [a for a, c in zip(with_depth, closed) if not c] != [b for b, c in zip(base_answers, closed) if not c]
    off = p(image=imgs, question=qs, depth=depth, use_depth=False)
    assert [r["modalities"] for r in off] == [[]] * 4 and [r["answer"] for r in off] == base_answers
    assert [a for a, c in zip(with_depth, closed) if c] == [b for b, c in zip(base_answers, closed) if c]
    with pytest.raises(ValueError, match=r"use_depth=True for row\(s\) \[1, 3\], which have no depth"):
        p(image=imgs, question=qs, depth=depth, use_depth=True)
    with pytest.raises(ValueError, match="audio: this model has no audio modality"):
        p(image=imgs[0], question=qs[0], audio=rows[0].audio)


def test_audio_and_depth_together_each_row_uses_its_own(modal):
    """An audio run with depth added, loaded from its saved processor (which names the depth encoder): rows
    using audio only answer as the audio-only run does, rows using neither as the base."""
    _, _, _, both, run, rows = modal
    p = safe.pipeline(both)
    assert p.model.modality_names == ["audio", "depth"]
    qs, imgs, maps = [e.question for e in rows], [e.image for e in rows], _maps(4, 1)
    audio, depth = [rows[0].audio, None, rows[2].audio, None], [None, maps[1], maps[2], None]
    out = p(image=imgs, question=qs, audio=audio, depth=depth)
    assert [r["modalities"] for r in out] == [["audio"], ["depth"], ["audio", "depth"], []]
    assert [r["used_audio"] for r in out] == [True, False, True, False]
    alone = safe.pipeline(run)(image=imgs, question=qs, audio=audio)  # the run before depth was added
    assert out[0]["answer"] == alone[0]["answer"] and out[3]["answer"] == alone[3]["answer"]
    assert {k: v for k, v in out[0].items() if k not in ("used_depth", "modalities")} == \
        {k: v for k, v in alone[0].items() if k != "modalities"}
    with pytest.raises(ValueError, match="thermal: this model has no thermal modality"):
        p(image=imgs[0], question=qs[0], thermal=maps[0])
    with pytest.raises(ValueError, match=r"depth\[0\]: expected a 2-D map"):
        p(image=imgs[0], question=qs[0], depth=np.zeros((2, 2, 2, 2)))


def test_a_missing_encoder_is_refused_naming_the_modality_and_the_flag(modal):
    base, _, depth_run, _, _, _ = modal
    with pytest.raises(ValueError, match=r"carries the depth modality; give its encoder .*--depth-encoder"):
        safe.pipeline(depth_run, base)


def _predict(capsys, *argv):
    rc = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


def test_safe_predict_with_a_depth_file(modal, tmp_path, capsys):
    base, vit, depth_run, both, _, rows = modal
    maps = _maps(2, 2)
    np.save(tmp_path / "d0.npy", maps[0])
    rc, out, _ = _predict(capsys, "--run-dir", depth_run, "--base", base, "--depth-encoder", vit,
                          "--question", rows[0].question, "--image", rows[0].image,
                          "--depth-file", tmp_path / "d0.npy")
    assert rc == 0 and out[0]["modalities"] == ["depth"]
    lines = [{"id": "a", "question": rows[0].question, "image": rows[0].image, "depth": "d0.npy"},
             {"id": "b", "question": rows[1].question, "image": rows[0].image},
             {"id": "c", "question": rows[1].question, "image": rows[0].image, "depth": "d0.npy", "use_depth": False}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    rc, out, _ = _predict(capsys, "--checkpoint", both / "checkpoints" / "final", "--input", tmp_path / "in.jsonl")
    assert rc == 0 and [(r["id"], r["modalities"]) for r in out] == [("a", ["depth"]), ("b", []), ("c", [])]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q?", "depth": "nope.npy"}))
    rc, _, err = _predict(capsys, "--checkpoint", both / "checkpoints" / "final", "--input", tmp_path / "bad.jsonl")
    assert rc == 2 and "bad.jsonl:1: depth" in err and "nope.npy: no such file" in err


def _preview_gate(spec, reads_preview: bool = True):
    """A gate with a known decision: it uses its modality exactly where the preview's first cell is near (> 0.5),
    or with ``reads_preview`` False on every row."""
    from safe.policy.network import GateMLP
    from safe.policy.runtime import AudioPolicy

    gate = GateMLP(spec.dim, 4)
    gate.set_input_normalization(torch.zeros(spec.dim), torch.ones(spec.dim))
    with torch.no_grad():
        for prm in gate.parameters():
            prm.zero_()
        if reads_preview:
            gate.net[0].weight[0, spec.question_dim + spec.image_dim] = 1.0
            gate.net[0].bias[0] = -0.5
            gate.net[2].weight[0, 0] = 10.0
        else:
            gate.net[2].bias[0] = 10.0
    return AudioPolicy(spec, "mlp", 4, net=gate)


def test_a_depth_policy_in_the_checkpoint_decides_the_depth_rows(modal, tmp_path):
    """The depth track's checkpoints/policy: the attached depth policy decides per row from the map's preview
    (a row without a map never uses depth); the answers are those of the same choice forced with use_depth."""
    from safe.policy.outcomes import state_spec

    base, vit, depth_run, _, _, rows = modal
    p = safe.pipeline(depth_run, base, encoders={"depth": vit})
    p.model.attach_policy(_preview_gate(state_spec(p.model, early=True)))
    p.model.save_pretrained(tmp_path / "checkpoints" / "policy")
    p.model.remove_hooks()
    p = safe.pipeline(tmp_path, base, encoders={"depth": vit})
    assert p.model.policy is not None
    near, far = np.full((IMAGE_SIZE, IMAGE_SIZE), 6.0, np.float32), np.full((IMAGE_SIZE, IMAGE_SIZE), 6.0, np.float32)
    near[:8, :8] = 1.0  # an object in the first patch (the tiny encoder's patches are 8 px)
    qs, imgs = [e.question for e in rows], [e.image for e in rows]
    out = p(image=imgs, question=qs, depth=[near, None, far, None])
    assert [r["used_depth"] for r in out] == [True, False, False, False]
    assert [r["modalities"] for r in out] == [["depth"], [], [], []]
    assert out[0]["depth_probability"] > 0.5 and out[2]["depth_probability"] == 0.5 and out[1]["depth_probability"] is None
    forced = p(image=imgs, question=qs, depth=[near, None, far, None], use_depth=[True, False, False, False])
    assert [r["answer"] for r in out] == [r["answer"] for r in forced]
    given = p(image=imgs, question=qs, depth=[near, None, far, None], use_depth=[True, False, True, False])
    assert [r["used_depth"] for r in given] == [True, False, True, False]  # a given choice overrides the policy
    assert all(r["depth_probability"] is None for r in given)


def near_and_far() -> tuple[np.ndarray, np.ndarray]:
    """A map with an object in the first patch (the preview gate uses depth) and an empty one (it does not)."""
    near, far = np.full((IMAGE_SIZE, IMAGE_SIZE), 6.0, np.float32), np.full((IMAGE_SIZE, IMAGE_SIZE), 6.0, np.float32)
    near[:8, :8] = 1.0
    return near, far


@pytest.fixture(scope="module")
def composed(modal, tmp_path_factory):
    """The audio run with depth added from a depth checkpoint saved with its own policy (the preview gate), and an
    audio policy that uses every clip: one checkpoint with two policies, saved with its processor."""
    from safe.policy.outcomes import state_spec

    base, vit, depth_run, both, _, _ = modal
    root = tmp_path_factory.mktemp("composed")
    depth_alone = safe.pipeline(depth_run, base, encoders={"depth": vit})
    depth_alone.model.attach_policy(_preview_gate(state_spec(depth_alone.model, early=True)))
    depth_ckpt = depth_alone.model.save_pretrained(root / "depth_policy")
    depth_alone.model.remove_hooks()
    p = safe.pipeline(both)
    p.model.remove_modality("depth")
    p.model.load_modality("depth", depth_ckpt, tiny_vision_encoder("vit"))  # brings its policy along
    assert p.model.policy_of("depth") is not None and p.model.policy is None
    p.model.attach_policy(_preview_gate(state_spec(p.model, early=True), reads_preview=False))  # audio's own
    out = p.model.save_pretrained(root / "checkpoints" / "policy")
    p.processor.save_pretrained(out)
    p.model.remove_hooks()
    return root


def test_two_policies_side_by_side_each_decides_its_own_modality(modal, composed):
    """Audio's policy and depth's policy (loaded with the depth checkpoint by load_modality) each decide their own
    rows in one batch, as each decides alone; the composed model saves and reloads both; rows using audio only
    answer as the audio-only run, rows using nothing as the base."""
    _, _, _, _, run, rows = modal
    ckpt = composed / "checkpoints" / "policy"
    assert set(json.loads((ckpt / "safe_config.json").read_text())["modalities"]["depth"]) >= {"policy"}
    p = safe.pipeline(composed)  # both policies reloaded from the one checkpoint
    near, far = near_and_far()
    qs, imgs = [e.question for e in rows], [e.image for e in rows]
    audio, depth = [rows[0].audio, None, rows[2].audio, None], [None, near, far, None]
    out = p(image=imgs, question=qs, audio=audio, depth=depth)
    assert [r["used_audio"] for r in out] == [True, False, True, False]
    assert [r["used_depth"] for r in out] == [False, True, False, False]  # the preview gate: near yes, far no
    assert [r["modalities"] for r in out] == [["audio"], ["depth"], ["audio"], []]
    assert out[0]["audio_probability"] > 0.99 and out[1]["audio_probability"] is None
    assert out[1]["depth_probability"] > 0.5 and out[2]["depth_probability"] == 0.5 and out[0]["depth_probability"] is None
    # each policy decides as it does alone: depth's on the depth-only model, audio's choice forced here
    alone = safe.pipeline(run)(image=imgs, question=qs, audio=audio)
    assert out[0]["answer"] == alone[0]["answer"] and out[2]["answer"] == alone[2]["answer"]
    assert out[3]["answer"] == alone[3]["answer"]
    forced = p(image=imgs, question=qs, audio=audio, depth=depth, use_audio=[True, False, True, False],
               use_depth=[False, True, False, False])
    assert [r["answer"] for r in forced] == [r["answer"] for r in out]
    # a given choice for one modality leaves the other to its policy
    half = p(image=imgs, question=qs, audio=audio, depth=depth, use_audio=False)
    assert [r["used_audio"] for r in half] == [False] * 4 and [r["used_depth"] for r in half] == [False, True, False, False]
    p.model.remove_modality("depth")
    assert "depth_policy" not in p.model.safe_modules()


def test_a_cascade_policy_beside_another_modality_names_the_flag_that_decides_instead(modal, composed):
    """A policy that reads the base's confidence decides inside its own generate: beside depth's policy in one
    batch it is refused, and the error names use_audio, which decides those rows instead."""
    from safe.policy.outcomes import state_spec

    _, _, _, _, _, rows = modal
    p = safe.pipeline(composed)
    spec = state_spec(p.model, early=False)
    assert spec.confidence_dim  # the cascade state
    p.model.attach_policy(_preview_gate(spec, reads_preview=False))
    near, _ = near_and_far()
    qs, imgs = [e.question for e in rows[:2]], [e.image for e in rows[:2]]
    with pytest.raises(ValueError, match=r"audio policy's state includes the base's confidence.*use_audio=True / False"):
        p(image=imgs, question=qs, audio=[rows[0].audio, None], depth=[None, near])
    out = p(image=imgs, question=qs, audio=[rows[0].audio, None], depth=[None, near], use_audio=[True, False])
    assert [r["used_audio"] for r in out] == [True, False] and out[1]["used_depth"] is True
    p.model.remove_hooks()
