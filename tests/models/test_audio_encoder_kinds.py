"""Every supported audio encoder (tiny random configs of the real classes): loaded from a checkpoint
directory with its own feature extractor, fed through FeatureFrontEnd, fused into a tiny LLaVA with
closed rows bit-exact to the base and open rows changed; an unsupported encoder is refused naming the
supported ones."""
import copy

import numpy as np
import pytest
import torch

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P
from safe.models.audio_encoders import SUPPORTED_AUDIO_ENCODERS, AudioEncoder
from safe.models.loading import load_audio_encoder
from safe.processing.features import FeatureFrontEnd

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


NEW = ["ast", "wav2vec2", "hubert", "wavlm", "qwen2-audio"]
MIXED = torch.tensor([True, False, True, False])


@pytest.fixture(scope="module")
def llava():
    return P.tiny_base("llava")


@pytest.mark.parametrize("kind", NEW)
def test_encoder_from_disk_with_its_extractor_fuses_and_keeps_closed_rows(kind, llava, tmp_path):
    encoder = P.tiny_audio_encoder(kind)
    encoder.save_pretrained(tmp_path)
    P.tiny_feature_extractor(kind).save_pretrained(tmp_path)
    loaded = load_audio_encoder(tmp_path)
    assert type(loaded) is type(encoder)
    front = FeatureFrontEnd(tmp_path, waveform_seconds=0.2)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 4000, 9000, 16000)]
    feats = front(clips)
    assert feats.shape[0] == 4 and torch.isfinite(feats).all()
    base = copy.deepcopy(llava)
    ref = copy.deepcopy(llava)
    model = SAFEModel(base, loaded, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4))
    assert model.audio_encoder.kind == kind and model.signature["audio_encoder"] == kind
    model.set_gates(0.5)
    x = P.random_vl_inputs(base, 4)
    with torch.no_grad():
        got, want = model(**x, audio_features=feats, audio_mask=MIXED).logits, ref(**x).logits
        gen = model.generate(**x, audio_features=feats, audio_mask=MIXED, max_new_tokens=3, do_sample=False)
        gen_ref = ref.generate(**x, max_new_tokens=3, do_sample=False)
    assert torch.equal(got[~MIXED], want[~MIXED]) and torch.equal(gen[~MIXED], gen_ref[~MIXED])
    assert (got[MIXED] - want[MIXED]).abs().max() > 1e-4
    assert model.audio_encoder_calls == 4  # two open rows, in forward and in generate


def test_waveform_front_end_gives_one_length_for_any_clip_length():
    front = FeatureFrontEnd(extractor=P.tiny_feature_extractor("wav2vec2"), waveform_seconds=0.5)
    a = front([np.ones(100, np.float32)])
    b = front([np.ones(20000, np.float32), np.ones(300, np.float32)])
    assert a.shape[1] == b.shape[1] == 8000 and front.window_seconds == 0.5


def test_unsupported_encoder_is_refused_naming_the_supported():
    with pytest.raises(ValueError, match=r"unsupported audio encoder Linear; SAFE supports: .*ASTModel.*Wav2Vec2Model"):
        AudioEncoder(torch.nn.Linear(2, 2))
    assert {"HubertModel", "WavLMModel", "Qwen2AudioEncoder"} <= set(SUPPORTED_AUDIO_ENCODERS)
