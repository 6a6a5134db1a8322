"""The LoRA baseline SAFE is compared with, on a tiny Gemma 3 of the real class inside the LLaVA base. What the
comparison depends on: the baseline's LoRA changes the language model's answers and logits on inputs without
audio while SAFE's closed path is the base bit for bit; the baseline's own tensors and the base are intact (LoRA
off = the base); the record holds every figure the docs section is written from."""
import json

import pytest
import torch

from safe.bench import files
from safe.bench.gemma import lora_baseline as lb
from safe.bench.gemma import lora_docs
from safe.bench.gemma.lora_model import AudioPrefixLoRA, LoraBaselineConfig
from tests.bench.gemma_lora_helpers import tiny_gemma_vl as tiny_gemma_vl_dirs

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_gemma_vl(tiny_builtin, tmp_path_factory):
    """A saved tiny Gemma LLaVA base, a tiny Whisper folder and the tiny benchmark."""
    bench, base = tiny_builtin
    vl, whisper = tiny_gemma_vl_dirs(bench, base, tmp_path_factory.mktemp("gemma_lora"), lb.builtin_text_prompts())
    return bench, vl, whisper


def _rows(bench, fmt, n=4):
    test = [e for e in files.load_split(bench, "test") if not e.needs_audio][:n]
    enc = fmt.encode(test)
    return fmt.prompt_batch(enc, range(len(test))), fmt.pixels([e.image for e in test])


def test_lora_changes_the_base_without_audio_safe_closed_does_not(tiny_gemma_vl):
    from safe import SAFEConfig, SAFEModel
    from safe.inference.loading import load_frozen

    bench, vl_dir, whisper = tiny_gemma_vl
    vl, encoder, fmt, _ = load_frozen(vl_dir, whisper)
    batch, pixels = _rows(bench, fmt)
    with torch.no_grad():
        ref = vl(**batch, pixel_values=pixels).logits.clone()
    safe = SAFEModel(vl, encoder, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4))
    safe.set_gates(0.5)  # trained-looking gates: open where audio is given
    with torch.no_grad(), safe.audio_disabled():
        closed = safe(**batch, pixel_values=pixels).logits
    assert torch.equal(closed, ref)
    with safe.hooks_detached() as plain:
        prefix = AudioPrefixLoRA(plain, 32, LoraBaselineConfig(lora_rank=4, lora_alpha=8, num_audio_tokens=4))
        with torch.no_grad():
            assert torch.equal(plain(**batch, pixel_values=pixels).logits, ref)  # LoRA's B starts at zero
            for name, p in plain.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)  # what training does to B
            moved = plain(**batch, pixel_values=pixels).logits
            assert (moved - ref).abs().max() > 1e-4  # the baseline changes the base on inputs without audio
            with prefix.adapters_disabled():
                assert torch.equal(plain(**batch, pixel_values=pixels).logits, ref)  # the base's tensors intact
        assert {n for n, p in prefix.named_parameters() if p.requires_grad} == \
            {n for n, _ in prefix.named_parameters() if "lora_" in n or n.startswith("projector.")}


def test_prefix_goes_after_bos_and_trains(tiny_gemma_vl):
    from safe.inference.loading import load_frozen

    bench, vl_dir, whisper = tiny_gemma_vl
    vl, _, fmt, _ = load_frozen(vl_dir, whisper)
    prefix = AudioPrefixLoRA(vl, 32, LoraBaselineConfig(lora_rank=4, lora_alpha=8, num_audio_tokens=3))
    test = [e for e in files.load_split(bench, "test")][:3]
    batch = fmt.train_batch(fmt.encode(test), range(3))
    audio = torch.randn(3, 50, 32)
    emb, mask, pos, labels = prefix.embed(batch["input_ids"], batch["attention_mask"], audio, batch["labels"])
    assert emb.shape[1] == batch["input_ids"].shape[1] + 3 and int(mask.sum()) == int(batch["attention_mask"].sum()) + 9
    for i in range(3):
        first = int((batch["attention_mask"][i] == 0).sum())
        assert torch.equal(emb[i, first], vl.get_input_embeddings()(batch["input_ids"][i, first]))  # <bos> first
        assert (labels[i, first + 1:first + 4] == -100).all()
    assert torch.equal(labels[labels != -100], batch["labels"][batch["labels"] != -100])
    loss = prefix.loss(batch, fmt.pixels([e.image for e in test]), audio)
    loss.backward()
    assert prefix.projector.fc1.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in prefix.named_parameters() if "lora_A" in n
               or "lora_B" in n)


def test_compare_writes_the_record_and_the_docs_section(tiny_gemma_vl, tmp_path):
    bench, vl_dir, whisper = tiny_gemma_vl
    cfg = lb.CompareConfig(lora=LoraBaselineConfig(steps=2, batch_size=4, lora_rank=4, lora_alpha=8,
                                                   num_audio_tokens=4, warmup_steps=1, lr_lora=0.05),
                           safe_overrides=("safe.fusion_layers=[0, -1]", "safe.num_audio_tokens=4",
                                           "curriculum.order=none", "retention_every=0", "retention_examples=8",
                                           "checkpoint_every=0"),
                           max_train=48, n_vl=4, n_audio=4, n_text=4)
    record = lb.compare(vl_dir, whisper, bench, tmp_path / "out", cfg, progress=False)
    assert json.loads((tmp_path / "out" / lb.RECORD).read_text())["format_version"] == lb.FORMAT_VERSION
    safe, lora = record["safe"], record["lora"]
    # SAFE without audio is the base: every text and VL answer, and the logits bit for bit
    assert safe["text_changed_no_audio"] == 0 and safe["vl_changed_no_audio"] == 0
    assert safe["logits_equal_no_audio"] is True and safe["base_byte_identical"] is True
    # the baseline trained its LoRA: the language model answers differently without any audio
    assert lora["logits_equal_no_audio"] is False and lora["logits_max_abs_diff_no_audio"] > 0
    assert lora["parameters"]["lora"] > 0 and lora["steps"] == 2 == safe["steps"]
    assert record["config"]["n_text"] == 4 and record["config"]["n_vl"] == 4 and record["config"]["n_spoken"] == 4
    page = tmp_path / "page.md"
    page.write_text(f"head\n{lora_docs.START}\nold\n{lora_docs.END}\ntail\n")
    text = lora_docs.write(tmp_path / "out" / lb.RECORD, [page], source="record.json")
    assert "old" not in page.read_text() and "yes (`torch.equal`)" in text and "no (max change" in text
    assert f"{lora['parameters']['trainable']:,}" in text


def test_text_prompts_are_the_tracks_set_else_the_modules_own(monkeypatch):
    prompts, source = lb.text_prompts(6)
    assert source == "safe.bench.gemma.track_text.text_prompts" and len(prompts) == 6
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in prompts)
    monkeypatch.setitem(__import__("sys").modules, "safe.bench.gemma.track_text", None)  # as before the track
    prompts, source = lb.text_prompts(5)
    assert source.endswith("builtin_text_prompts") and prompts == lb.builtin_text_prompts()[:5]


def test_cli_names_a_missing_folder(tmp_path, capsys):
    assert lb.main(["--base", str(tmp_path / "nope"), "--audio", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "--base" in capsys.readouterr().err


def test_compare_takes_safe_from_a_finished_run(tiny_gemma_vl, tmp_path):
    """--safe-run: SAFE's side is a finished Stage A run's checkpoint (same answers as training it here), and a
    run on other data is refused by name."""
    import shutil

    bench, vl_dir, whisper = tiny_gemma_vl
    cfg = lb.CompareConfig(lora=LoraBaselineConfig(steps=1, batch_size=4, lora_rank=4, lora_alpha=8,
                                                   num_audio_tokens=4, warmup_steps=0),
                           safe_overrides=("safe.fusion_layers=[0, -1]", "safe.num_audio_tokens=4",
                                           "curriculum.order=none", "retention_every=0", "checkpoint_every=0"),
                           max_train=32, n_vl=4, n_audio=4, n_text=3)
    first = lb.compare(vl_dir, whisper, bench, tmp_path / "a", cfg, progress=False)
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "a" / "safe_run" / "checkpoints" / "final", run / "checkpoints" / "final")
    (run / "run.json").write_text(json.dumps({"base": str(vl_dir), "audio": str(whisper), "data": str(bench),
                                              "recipe": {"batch_size": 4}}))
    (run / "metrics.json").write_text(json.dumps({"stage_a": {"train_seconds": 12.5, "steps": 1}}))
    from dataclasses import replace

    again = lb.compare(vl_dir, whisper, bench, tmp_path / "b", replace(cfg, safe_run=str(run)), progress=False)
    assert again["safe"]["answers"] == first["safe"]["answers"]
    assert again["safe"]["train_seconds"] == 12.5 and again["config"]["safe_run"] == str(run)
    assert not (tmp_path / "b" / "safe_run").exists()  # nothing trained here
    assert f"Stage A of `{run}`" in lora_docs.block(again, "r.json")
    (run / "run.json").write_text(json.dumps({"base": str(vl_dir), "audio": str(whisper), "data": str(tmp_path)}))
    with pytest.raises(ValueError, match="was trained with data"):
        lb.compare(vl_dir, whisper, bench, tmp_path / "c", replace(cfg, safe_run=str(run)), progress=False)
