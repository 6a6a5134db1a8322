"""The policy at inference: per-row decisions, skipped rows bit-exact to the base and never encoded."""
import numpy as np
import pytest
import torch

from safe import SAFEModel
from safe.policy.features import PREVIEW_DIM, StateSpec, confidence_features
from safe.policy.network import GateMLP
from safe.policy.runtime import AudioPolicy, PolicyGenerateOutput
from safe.processing.features import audio_preview
from tests.models.helpers import build, inputs

torch.set_num_threads(1)
GEN = dict(max_new_tokens=4, do_sample=False)


def _preview_gate(spec: StateSpec) -> AudioPolicy:
    """A Stage C gate that uses audio exactly where preview feature 0 is positive."""
    net = GateMLP(spec.dim, hidden=1)
    with torch.no_grad():
        net.net[0].weight.zero_()
        net.net[0].bias.zero_()
        net.net[0].weight[0, spec.question_dim + spec.image_dim] = 1.0
        net.net[2].weight.fill_(1.0)
        net.net[2].bias.zero_()
    return AudioPolicy(spec, "mlp", hidden=1, net=net)


def _setup(batch=4):
    model, ref, enc = build()
    model.set_gates(0.7)  # gates open: audio rows really differ from the base
    spec = StateSpec(model.hidden_size, model.hidden_size)
    model.attach_policy(_preview_gate(spec))
    x, audio = inputs(model, enc, batch=batch)
    return model, ref, x, audio, spec


def _preview(use):
    p = torch.zeros(len(use), PREVIEW_DIM)
    p[:, 0] = torch.tensor([1.0 if u else -1.0 for u in use])
    return p


def test_policy_rows_skip_the_encoder_and_match_the_base():
    model, ref, x, audio, _ = _setup()
    use = [True, False, False, True]
    model.audio_encoder_calls = 0
    out = model.generate(**x, audio_features=audio, audio_preview=_preview(use), **GEN)
    assert isinstance(out, PolicyGenerateOutput)
    assert out.used_audio.tolist() == use
    assert model.audio_encoder_calls == 2  # counted: only the two chosen rows reached the encoder
    base_out = ref.generate(**x, **GEN)
    for i in (1, 2):  # skipped rows: the base's own tokens on the same batch, bit-exact
        assert torch.equal(out.sequences[i, : base_out.shape[1]], base_out[i])
    rows = torch.tensor([0, 3])
    sub = {k: v[rows] for k, v in x.items()}
    with_audio = model.generate(**sub, audio_features=audio[rows], audio_mask=torch.ones(2, dtype=torch.bool), **GEN)
    assert torch.equal(out.sequences[rows, : with_audio.shape[1]], with_audio)


def test_skip_everything_costs_the_base_only():
    model, ref, x, audio, _ = _setup()
    model.audio_encoder_calls = 0
    out = model.generate(**x, audio_features=audio, audio_preview=_preview([False] * 4), **GEN)
    assert not out.used_audio.any()
    assert model.audio_encoder_calls == 0
    assert torch.equal(out.sequences, ref.generate(**x, **GEN))


def test_rows_chosen_for_audio_stop_the_vl_only_pass_after_one_step():
    from safe.policy.runtime import base_pass

    model, ref, x, _, _ = _setup()
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)  # no EOS: every row would take 6 steps
    steps = []
    handle = model.base_model.register_forward_hook(lambda *a: steps.append(1))
    try:
        full = base_pass(model, x, **gen)
        n_full = len(steps)
        steps.clear()
        chosen = torch.tensor([True, False, True, False])
        part = base_pass(model, x, decide=lambda parts: chosen.clone(), **gen)
        n_part = len(steps)
        steps.clear()
        base_pass(model, x, decide=lambda parts: torch.ones(4, dtype=torch.bool), **gen)
        n_none_left = len(steps)
    finally:
        handle.remove()
    assert (n_full, n_part, n_none_left) == (6, 6, 1)  # the loop ends once no row is left, not before
    assert part.use.tolist() == chosen.tolist()
    assert torch.equal(part.sequences[~chosen], full.sequences[~chosen])  # other rows: unchanged tokens
    assert torch.equal(part.confidence, full.confidence)
    assert torch.equal(full.sequences, ref.generate(**x, **gen))


def test_explicit_mask_overrides_the_policy_and_audio_disabled_is_the_base():
    model, ref, x, audio, _ = _setup()
    mask = torch.tensor([False, True, False, False])
    out = model.generate(**x, audio_features=audio, audio_mask=mask, **GEN)
    assert isinstance(out, torch.Tensor)
    with model.audio_disabled():
        plain = model.generate(**x, audio_features=audio, **GEN)
    assert torch.equal(plain, ref.generate(**x, **GEN))


def test_policy_errors_name_the_problem():
    model, _, x, audio, _ = _setup()
    with pytest.raises(ValueError, match="audio_preview"):
        model.generate(**x, audio_features=audio, **GEN)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(**x, audio_features=audio, audio_preview=_preview([True] * 4), num_beams=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="hidden size"):
        model.attach_policy(_preview_gate(StateSpec(7, 7)))
    with pytest.raises(TypeError):
        model.attach_policy(GateMLP(4))


def test_policy_is_saved_and_loaded_with_the_checkpoint(tmp_path):
    model, _, x, audio, _ = _setup()
    model.save_pretrained(tmp_path)
    model.remove_hooks()
    loaded = SAFEModel.from_pretrained(tmp_path, model.base_model, model.audio_encoder)
    assert loaded.policy is not None and loaded.policy.kind == "mlp"
    assert loaded.parameter_report()["policy"]["parameters"] == model.policy.net.num_parameters()
    use = [False, True, True, False]
    a = loaded.generate(**x, audio_features=audio, audio_preview=_preview(use), **GEN)
    assert a.used_audio.tolist() == use


def test_state_features_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    c = confidence_features(logits)
    h = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert torch.allclose(c[0], torch.tensor([0.7, h, 0.5]).float(), atol=1e-6)
    assert torch.allclose(c[1], torch.tensor([1 / 3, np.log(3), 0.0]).float(), atol=1e-6)
    clip = np.zeros(1600, dtype=np.float32)
    clip[800:900] = np.sin(np.arange(100) * 0.5)  # a burst in the second half
    p = audio_preview([clip, np.ones(32, dtype=np.float32)])
    assert p.shape == (2, PREVIEW_DIM)
    assert float(p[0, 0]) == pytest.approx(-5.0)  # silent first segment: log10 of the floor
    assert float(p[0, 8]) > -1.0  # segment 8 (samples 800-899) holds the burst
    assert float(p[1, -2]) == pytest.approx(np.log10(1 + 1e-5), abs=1e-7)  # float32 log
    with pytest.raises(ValueError, match="waveforms\\[0\\]"):
        audio_preview([np.zeros((2, 5))])


@pytest.mark.parametrize("kind", ["ppo", "mlp"])
def test_decide_with_probability_is_decide_and_use_probability_in_one_forward(kind):
    from safe.policy.network import PolicyNetwork

    torch.manual_seed(0)
    spec = StateSpec(8, 8)
    net = PolicyNetwork(spec.dim, 16) if kind == "ppo" else GateMLP(spec.dim, 16)
    with torch.no_grad():  # a spread of probabilities on both sides of 0.5
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    policy = AudioPolicy(spec, kind, 16, net=net)
    states = torch.randn(200, spec.dim)
    use, prob = policy.decide_with_probability(states)
    assert torch.equal(use, policy.decide(states))
    assert torch.equal(prob, policy.use_probability(states))
    assert 0 < int(use.sum()) < 200


# ------------------------------------------------------------------------------------------
# the early state: decided before the language model runs, one generate per batch
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base_kind", ["llava", "blip2-opt", "blip2-t5"])
def test_early_image_embedding_equals_the_prefill_capture_without_the_language_model(base_kind):
    from safe.policy.features import capture_image_embedding, image_embedding

    model, _, enc = build(base_kind)
    x, _ = inputs(model, enc)
    bb = model.backbone
    lm_calls = []
    lm = getattr(model.base_model, "language_model", None) or model.base_model.model.language_model  # LLaVA: inner
    handle = lm.register_forward_hook(lambda *a: lm_calls.append(1))
    try:
        early = image_embedding(model.base_model, bb.image_projection, x)
        assert lm_calls == []  # stopped after the projection: the language model never ran
        with torch.no_grad(), capture_image_embedding(bb.image_projection) as seen:
            model.base_model(**x)
        assert lm_calls  # the hooked module is the one a full forward runs
    finally:
        handle.remove()
    assert torch.equal(early, seen["image"].cpu())
    with pytest.raises(ValueError, match="pixel_values"):
        image_embedding(model.base_model, bb.image_projection, {k: v for k, v in x.items() if k != "pixel_values"})


def _early_setup():
    model, ref, enc = build()
    model.set_gates(0.7)
    spec = StateSpec(model.hidden_size, model.hidden_size, confidence_dim=0)
    model.attach_policy(_preview_gate(spec))
    x, audio = inputs(model, enc)
    return model, ref, x, audio


def test_early_state_runs_one_generate_encodes_chosen_rows_and_keeps_the_others_bit_exact():
    model, ref, x, audio = _early_setup()
    use = [True, False, False, True]
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)  # no EOS: 5 steps per generate
    steps = []
    handle = model.base_model.register_forward_hook(lambda *a: steps.append(1))
    try:
        model.audio_encoder_calls = 0
        out = model.generate(**x, audio_features=audio, audio_preview=_preview(use), **gen)
    finally:
        handle.remove()
    assert out.used_audio.tolist() == use and out.states.shape[1] == model.policy.spec.dim
    assert len(steps) == 5  # one generate for the whole batch (the image probe stops before the model returns)
    assert model.audio_encoder_calls == 2
    base_out = ref.generate(**x, **gen)
    assert torch.equal(out.sequences[[1, 2]], base_out[[1, 2]])  # skipped rows: the base's own tokens
    assert not torch.equal(out.sequences[[0, 3]], base_out[[0, 3]])  # the chosen rows really heard audio
    mask = torch.tensor(use)
    assert torch.equal(out.sequences, model.generate(**x, audio_features=audio, audio_mask=mask, **gen))
    lazy = model.generate(**x, audio_features=lambda r: audio[r], audio_preview=_preview(use), **gen)
    assert torch.equal(lazy.sequences, out.sequences)
    none = model.generate(**x, audio_features=audio, audio_preview=_preview([False] * 4), **gen)
    assert torch.equal(none.sequences, base_out) and not none.used_audio.any()


def test_state_spec_rejects_a_partial_confidence():
    with pytest.raises(ValueError, match="confidence_dim must be 0"):
        StateSpec(4, 4, confidence_dim=2)
    assert StateSpec(4, 4, confidence_dim=0).early and StateSpec(4, 4, confidence_dim=0).dim == 8 + PREVIEW_DIM


def test_early_policy_is_saved_and_loaded_with_the_checkpoint(tmp_path):
    model, _, x, audio = _early_setup()
    use = [False, True, True, False]
    before = model.generate(**x, audio_features=audio, audio_preview=_preview(use), **GEN)
    model.save_pretrained(tmp_path)
    model.remove_hooks()
    loaded = SAFEModel.from_pretrained(tmp_path, model.base_model, model.audio_encoder)
    assert loaded.policy.spec.early and loaded.policy.spec == model.policy.spec
    after = loaded.generate(**x, audio_features=audio, audio_preview=_preview(use), **GEN)
    assert after.used_audio.tolist() == use and torch.equal(after.sequences, before.sequences)


@pytest.mark.parametrize("early", [True, False])
def test_a_batch_without_images_gets_a_zero_image_part_and_skipped_rows_stay_the_base(early):
    model, ref, x, audio = _early_setup()
    if not early:
        model.attach_policy(_preview_gate(StateSpec(model.hidden_size, model.hidden_size)))
    keep = x["input_ids"] != model.backbone.image_token_id
    n_image = int((~keep[0]).sum())
    assert ((~keep).sum(1) == n_image).all()  # same image slots in every row, so the rest reshapes
    text = {"input_ids": x["input_ids"][keep].view(4, -1), "attention_mask": x["attention_mask"][keep].view(4, -1)}
    assert n_image > 0 and text["input_ids"].shape[1] == x["input_ids"].shape[1] - n_image
    use = [False, True, False, True]
    model.audio_encoder_calls = 0
    out = model.generate(**text, audio_features=audio, audio_preview=_preview(use), **GEN)
    assert out.used_audio.tolist() == use and model.audio_encoder_calls == 2
    h = model.hidden_size
    assert torch.equal(out.states[:, h: 2 * h], torch.zeros(4, h))
    base_out = ref.generate(**text, **GEN)
    for i in (0, 2):
        assert torch.equal(out.sequences[i, : base_out.shape[1]], base_out[i])
    assert not torch.equal(out.sequences[[1, 3], : base_out.shape[1]], base_out[[1, 3]])  # audio was heard


# ------------------------------------------------------------------------------------------
# the early path's prefill reuses the probe's image features: the vision tower runs once per batch
# ------------------------------------------------------------------------------------------
def _vision_embeddings(base):
    """The patch embedding of the base's vision tower: it runs exactly when the tower really computes
    (a replayed tower call returns the record without entering its submodules)."""
    tower = base.model.vision_tower if hasattr(base, "model") and hasattr(base.model, "vision_tower") else base.vision_model
    return tower.embeddings


def _early_on(base_kind, batch=4):
    model, ref, enc = build(base_kind)
    model.set_gates(0.7)
    model.attach_policy(_preview_gate(StateSpec(model.hidden_size, model.hidden_size, confidence_dim=0)))
    x, audio = inputs(model, enc, batch=batch)
    return model, ref, {k: v for k, v in x.items() if k != "decoder_input_ids"}, audio


@pytest.mark.parametrize("mode", ["greedy", "beams"])
@pytest.mark.parametrize("base_kind", ["llava", "blip2-opt", "blip2-t5"])
def test_early_path_runs_the_vision_tower_once_and_skipped_rows_stay_bit_exact(base_kind, mode):
    from safe.policy.features import capture_image_embedding

    model, ref, x, audio = _early_on(base_kind)
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    if mode == "beams":
        gen["num_beams"] = 3
    base_out = ref.generate(**x, **gen)
    with torch.no_grad(), capture_image_embedding(model.backbone.image_projection) as seen:
        model.base_model(**inputs(model, model.audio_encoder.model)[0])  # the image part a full prefill yields
    h = model.hidden_size
    runs = []
    handle = _vision_embeddings(model.base_model).register_forward_hook(lambda *a: runs.append(1))
    try:
        for use in ([False] * 4, [True, False, False, True]):
            runs.clear()
            model.audio_encoder_calls = 0
            out = model.generate(**x, audio_features=audio, audio_preview=_preview(use), **gen)
            assert len(runs) == 1, f"vision tower ran {len(runs)} times for one early-path generate"
            assert out.used_audio.tolist() == use and model.audio_encoder_calls == sum(use)
            skipped = torch.tensor([not u for u in use])
            assert torch.equal(out.sequences[skipped], base_out[skipped])  # the base's own tokens, bit-exact
            assert torch.equal(out.states[:, h: 2 * h], seen["image"].cpu())  # the state is unchanged
    finally:
        handle.remove()
    runs_base = []
    handle = _vision_embeddings(ref).register_forward_hook(lambda *a: runs_base.append(1))
    try:
        ref.generate(**x, **gen)
    finally:
        handle.remove()
    assert runs_base == [1]  # the base alone runs its tower once too: the early path adds no tower run


@pytest.mark.parametrize("base_kind", ["llava", "blip2-opt"])
def test_a_probe_replays_only_the_call_it_recorded(base_kind):
    from safe.policy.runtime import early_probe

    model, ref, x, _ = _early_on(base_kind)
    gen = dict(max_new_tokens=3, do_sample=False)
    _, probe = early_probe(model, x)
    other = {**x, "pixel_values": x["pixel_values"].flip(0)}  # another batch of images: must not be served
    with model.audio_disabled(), probe.reused():
        got = model.base_model.generate(**other, **gen)
    assert probe.replays == 0 and torch.equal(got, ref.generate(**other, **gen))
    _, probe = early_probe(model, x)
    with model.audio_disabled(), probe.reused():
        first = model.base_model.generate(**x, **gen)
        second = model.base_model.generate(**x, **gen)  # a record serves one call: this one computes
    assert probe.replays >= 2 and torch.equal(first, second) and torch.equal(first, ref.generate(**x, **gen))
    assert not any("forward" in m.__dict__ for m in model.base_model.modules())  # every patch removed
