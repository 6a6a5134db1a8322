"""The deployed policy reads the state parts it was trained on: the parts are recorded with the policy
(its StateSpec), the deployed paths (generate_with_policy, the pipeline behind ``safe predict`` and
``safe serve``) rebuild them as the training tables did, and a model that cannot compute one is refused."""
import numpy as np
import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.inference.loading import load_trained
from safe.inference.pipeline import Pipeline, pipeline
from safe.models.generation import MAX_NEW_TOKENS
from safe.policy.features import StateSpec, state_from_parts
from safe.policy.network import GateMLP
from safe.policy.outcomes import check_parts, state_spec
from safe.policy.preview import policy_preview
from safe.policy.runtime import AudioPolicy, generate_with_policy
from safe.policy.stage import PolicyStageConfig, prepare_policy_data
from safe.processing.processor import SAFEProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROWS = 12


def split_gate(states: torch.Tensor, hidden: int = 16) -> GateMLP:
    """A gate over ``states`` whose decisions split the rows, its threshold in the widest gap between the
    middle logits (so float noise in a rebuilt state cannot flip a decision, but a different state does)."""
    torch.manual_seed(0)
    gate = GateMLP(states.shape[1], hidden)
    gate.set_input_normalization(states.mean(0), states.std(0))
    with torch.no_grad():
        logits = gate(states).sort().values
        lo, hi = len(logits) // 4, 3 * len(logits) // 4
        k = lo + int((logits[lo + 1:hi + 1] - logits[lo:hi]).argmax())
        gate.net[-1].bias -= (logits[k] + logits[k + 1]) / 2
    return gate


@pytest.mark.parametrize("state", ["early", "cascade"])
def test_a_policy_on_the_pooled_image_decides_alike_in_training_and_deployed(untrained_ckpt, tmp_path, state):
    bench, base, path = untrained_ckpt
    model, fmt, frontend = load_trained(base, path)
    early = state == "early"
    spec = state_spec(model, early, ["question", "image_pooled", "preview"])
    assert spec.parts == ("question", "image_pooled", "preview") + (() if early else ("confidence",))
    tower = model.base_model.model.vision_tower
    assert spec.image_kind == "pooled" and spec.image_dim == tower.config.hidden_size
    examples = BuiltinSource(bench).split("test")[:ROWS]
    data = prepare_policy_data(model, fmt, frontend, examples, None, early=early, spec=spec)
    trained_states = data.outcomes["states"]  # the training-time state computation (the tables' states)
    gate = split_gate(trained_states)
    want = gate.decide(trained_states)
    assert 0 < int(want.sum()) < ROWS
    model.attach_policy(AudioPolicy(spec, "mlp", 16, net=gate))

    # the deployed runtime path (what safe policy train measures as "deployed")
    batch = data.prepared.prompt_inputs(fmt, list(range(ROWS)), torch.device("cpu"))
    out = generate_with_policy(model, audio_preview=model.policy.preview(model, frontend, data.waveforms),
                               audio_features=frontend(data.waveforms), **batch, max_new_tokens=MAX_NEW_TOKENS,
                               do_sample=False)
    torch.testing.assert_close(out.states, trained_states, rtol=1e-4, atol=1e-4)
    assert out.used_audio.tolist() == want.tolist()

    # the pipeline safe predict and safe serve load: the policy saved with its spec, loaded back
    model.save_pretrained(tmp_path / "policy")
    p = pipeline(tmp_path / "policy", base)
    assert p.model.policy.spec == spec
    rows = p(image=[e.image for e in examples], question=[e.question for e in examples],
             audio=[e.audio for e in examples])
    assert [r["used_audio"] for r in rows] == want.tolist()


def test_the_preview_embedding_part_is_rebuilt_by_the_pipeline(untrained_ckpt, tmp_path):
    """A policy on the encoder's preview embedding: the processor of its pipeline computes that preview,
    batch by batch as the tables did (the window padded per clip, not per batch)."""
    bench, base, path = untrained_ckpt
    model, fmt, frontend = load_trained(base, path)
    spec = state_spec(model, True, ["question", "image", "preview_embedding"])
    assert spec.preview_dim == model.audio_encoder.output_dim
    examples = BuiltinSource(bench).split("test")[:ROWS]
    data = prepare_policy_data(model, fmt, frontend, examples, None, early=True, spec=spec)
    gate = split_gate(data.outcomes["states"])
    want = gate.decide(data.outcomes["states"])
    model.attach_policy(AudioPolicy(spec, "mlp", 16, net=gate))
    model.save_pretrained(tmp_path / "policy")
    p = pipeline(tmp_path / "policy", base)
    rows = []
    for s in range(0, ROWS, 5):  # other batches than the tables'
        chunk = examples[s:s + 5]
        rows += p(image=[e.image for e in chunk], question=[e.question for e in chunk], audio=[e.audio for e in chunk])
    assert [r["used_audio"] for r in rows] == want.tolist()
    one = policy_preview(spec, data.waveforms[:1], model.audio_encoder, frontend)
    torch.testing.assert_close(one, policy_preview(spec, data.waveforms[:3], model.audio_encoder, frontend)[:1])


def test_a_model_that_cannot_compute_a_trained_part_is_refused_when_loaded(untrained_ckpt):
    _, base, path = untrained_ckpt
    model, fmt, frontend = load_trained(base, path)
    processor = SAFEProcessor.from_components(fmt, frontend, model.base_model)
    h, v = model.hidden_size, model.base_model.model.vision_tower.config.hidden_size
    wide = StateSpec(h, v + 1, confidence_dim=0, image_kind="pooled")
    model.attach_policy(AudioPolicy(wide, "mlp", 8))
    with pytest.raises(ValueError, match=rf"\('image_pooled'\) of width {v + 1}; this model's is {v} \(the vision"):
        Pipeline(model, processor)

    class NotWhisper:  # a front end without Whisper's log-mel extractor
        extractor = object()
        sampling_rate = 16000

    emb = StateSpec(h, h, model.audio_encoder.output_dim, 0, preview_kind="embedding")
    model.attach_policy(AudioPolicy(emb, "mlp", 8))
    with pytest.raises(ValueError, match=r"'preview_embedding'\), which this model cannot compute: it needs a "
                                         r"Whisper-kind encoder and front end"):
        model.policy.check_deployable(model, NotWhisper())
    model.policy.check_deployable(model, frontend)  # the built-in Whisper front end computes it
    # at decision time too: a part the deployment could not compute is named, not a shape error
    with pytest.raises(ValueError, match=r"trained on a state with the vision tower's pooled output"):
        state_from_parts(wide, {"question": torch.zeros(2, h), "image": torch.zeros(2, h), "image_pooled": None,
                                "preview": torch.zeros(2, 34)})


def test_state_parts_are_checked_and_recorded():
    assert check_parts(["preview", "question"]) == ("question", "preview")
    for bad, msg in ((["image", "image_pooled"], "two kinds of one part"), (["confidence"], "unknown part"),
                     ([], "at least one part"), (["question", "question"], "each once")):
        with pytest.raises(ValueError, match=msg):
            check_parts(bad)
    with pytest.raises(ValueError, match="unknown part 'clap'"):
        PolicyStageConfig(parts=["question", "clap"])
    assert PolicyStageConfig().parts == ["question", "image", "preview"]
    no_question = StateSpec(0, 8, 34, 3)
    assert no_question.parts == ("image", "preview", "confidence") and no_question.dim == 45
    assert StateSpec.from_dict(no_question.to_dict()) == no_question
    with pytest.raises(ValueError, match="at least one part"):
        StateSpec(0, 0, 0, 0)
    with pytest.raises(ValueError, match="question_dim must be an integer >= 0"):
        StateSpec(-1, 8)
    assert policy_preview(StateSpec(4, 4, 0, 0), [np.zeros(100, np.float32)], None, None).shape == (1, 0)
