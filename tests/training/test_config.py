import pytest

from safe.training.config import ConfigError, StageAConfig, load_stage_a_config


@pytest.mark.parametrize("override,message", [
    ("steps=0", "steps: expected a positive integer, got 0"),
    ("audio_share=1.5", "audio_share: expected a number strictly between 0 and 1, got 1.5"),
    ("lr_adapters=-1", "lr_adapters: expected a number > 0, got -1"),
    ("curriculum.start=2", "curriculum.start: expected a number in (0, 1], got 2"),
    ("curriculum.bogus=1", "unknown field(s) curriculum.bogus"),
    ("mixed_precision=fp8", "mixed_precision: expected one of ('no', 'bf16', 'fp16'), got 'fp8'"),
    ("safe.lora_rank=0", "safe: lora_rank must be a positive integer, got 0"),
    ("safe.nonsense=3", "safe: unknown SAFEConfig field(s) ['nonsense']"),
    ("warmup_steps=600", "warmup_steps: expected fewer than steps=500, got 600"),
    ("batch_size=30", "batch_size: expected divisible by grad_accum=4, got 30"),
    ("nonsense", "not of the form key=value"),
])
def test_bad_values_name_the_field_and_value(override, message):
    extra = ["grad_accum=4"] if override.startswith("batch_size") else []
    with pytest.raises(ConfigError) as err:
        load_stage_a_config(None, [*extra, override])
    assert message in str(err.value)


def test_yaml_recipes_load_and_overrides_apply(tmp_path):
    cfg = load_stage_a_config("configs/stage_a_builtin.yaml", ["steps=100", "safe.lora_rank=4"])
    assert cfg.steps == 100 and cfg.audio_share == 0.65 and cfg.safe_config().lora_rank == 4
    assert cfg.safe_config().fusion_layers == [0, 1, 2, 3]
    real = load_stage_a_config("configs/stage_a.yaml")
    assert (real.lr_projector, real.lr_adapters, real.weight_decay, real.grad_clip) == (1e-4, 5e-5, 0.01, 1.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage_a:\n  steps: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_stage_a_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_stage_a_config(tmp_path / "missing.yaml")


def test_a_mistyped_config_path_is_an_error_not_the_shipped_recipe(tmp_path, monkeypatch):
    """Only a bare file name or configs/NAME falls back to the shipped recipe of that name; a path into
    another folder that is not there is refused, so a typo never trains with the wrong recipe."""
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the shipped recipes answer by name
    assert load_stage_a_config("stage_a_builtin.yaml").audio_share == 0.65
    assert load_stage_a_config("configs/stage_a_builtin.yaml").audio_share == 0.65
    for typo in ("my_configs/stage_a_builtin.yaml", str(tmp_path / "runs" / "stage_a_builtin.yaml")):
        with pytest.raises(ConfigError, match=f"config file not found: {typo}$"):
            load_stage_a_config(typo)


def test_round_trip_through_dict():
    cfg = StageAConfig(steps=10, warmup_steps=2)
    assert StageAConfig(**{**cfg.to_dict()}).to_dict() == cfg.to_dict()
