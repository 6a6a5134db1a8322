"""safe verify on a family checkpoint directory saved with its own processor (the prompts of the check
come from that processor), under an explicit attention implementation; every family x encoder preset
pair under -m slow."""
import pytest

from safe.bench import presets as P
from safe.bench.families import tiny_family, tiny_processor
from safe.cli import main
from safe.stages.verify import VerifyConfig, verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


@pytest.mark.parametrize("attn, device_map", [("eager", None), ("sdpa", "auto")])
def test_verify_a_llava_next_checkpoint_directory(attn, device_map, tmp_path):
    tiny_family("llava-next").save_pretrained(tmp_path / "base")
    tiny_processor("llava-next").save_pretrained(tmp_path / "base")
    result = verify(VerifyConfig(base=str(tmp_path / "base"), audio="wav2vec2", attn_implementation=attn,
                                 device_map=device_map))  # "auto" on a CPU-only machine: accelerate places it
    assert result.ok, result.summary()
    (name,) = result.metrics["models"]
    assert name.endswith("x wav2vec2") and result.metrics["models"][name]["passed"]


def test_bad_attention_implementation_is_refused(capsys):
    assert main(["verify", "--attn-implementation", "flash"]) == 2
    assert "--attn-implementation must be sdpa or eager" in capsys.readouterr().err


@pytest.mark.slow
def test_all_presets_cover_every_family_and_encoder():
    result = verify(VerifyConfig(all_presets=True))
    assert result.ok
    assert len(result.metrics["models"]) == len(P.BASE_PRESETS) * len(P.AUDIO_PRESETS) == 105
