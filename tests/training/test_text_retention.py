"""Stage A's text-only retention rows (``stage_a.text_retention``): prompts with no image, the base's own greedy
answer as the reference, the KL with the gate open on an unrelated clip added to the retention term."""
import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.training.config import ConfigError, load_stage_a_config
from safe.training.text_retention import ANSWERS_FILE, TextRetention, load_prompts, write_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Question: What colour is grass?\nAnswer:", "Question: What is 2 plus 3?\nAnswer:",
           "Question: Complete: one, two, three,\nAnswer:", "Question: What is the opposite of up?\nAnswer:",
           "Question: How many legs does a cat have?\nAnswer:"]
ARCH = ["safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"]


@pytest.fixture(scope="module")
def prepared(tiny_builtin, tmp_path_factory):
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_safe

    bench, base = tiny_builtin
    model, fmt, frontend = load_safe(base, load_stage_a_config(None, ARCH))
    cache = AudioEmbeddingCache(tmp_path_factory.mktemp("cache"), encoder_fingerprint(model.audio_encoder, frontend))
    src = BuiltinSource(bench)
    train = prepare(src.split("train")[:32], fmt, model, frontend, cache)
    retention = prepare(src.split("retention")[:4], fmt, model, frontend, cache)
    return model, fmt, train, retention


def test_prompt_file_round_trip_and_errors_name_the_file_and_line(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    assert load_prompts(path) == PROMPTS
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: expected an object with a non-empty string 'prompt'"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 1: not JSON"):
        load_prompts(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="text_retention: no file"):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="text_retention_rows"):
        load_stage_a_config(None, ["text_retention_rows=0"])


def test_reference_answers_are_the_base_greedy_answers_cached_for_a_resume(prepared, tmp_path, monkeypatch):
    model, fmt, _, _ = prepared
    base = model.base_model
    text = TextRetention(PROMPTS, fmt.tok, base, max_answer_tokens=4, cache_dir=tmp_path, base_hash="b")
    for i, p in enumerate(PROMPTS):  # one prompt alone: no padding, the base's own greedy continuation
        ids = torch.tensor([fmt.tok(p)["input_ids"]])
        gen = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        new = gen[0, ids.shape[1]:].tolist()
        assert text.answer_ids[i] == new[:len(text.answer_ids[i])] and 1 <= len(text.answer_ids[i]) <= 4
    assert (tmp_path / ANSWERS_FILE).is_file()
    monkeypatch.setattr(type(base), "generate", lambda *a, **k: pytest.fail("generated again"))
    again = TextRetention(PROMPTS, fmt.tok, base, max_answer_tokens=4, cache_dir=tmp_path, base_hash="b")
    assert again.answer_ids == text.answer_ids
    with pytest.raises(pytest.fail.Exception, match="generated again"):  # another base: measured again
        TextRetention(PROMPTS, fmt.tok, base, max_answer_tokens=4, cache_dir=tmp_path, base_hash="other")


def test_batches_put_every_answer_at_the_end_and_draws_are_reproducible(prepared):
    model, fmt, _, _ = prepared
    text = TextRetention(PROMPTS, fmt.tok, model.base_model, max_answer_tokens=3)
    rows = text.draw(3, seed=0, step=7)
    assert rows == text.draw(3, seed=0, step=7) and len(set(rows)) == 3
    assert text.draw(3, seed=0, step=8) != rows or text.draw(3, seed=1, step=7) != rows
    inputs, labels = text.batch(rows)
    width = inputs["input_ids"].shape[1]
    for i, r in enumerate(rows):
        a = text.answer_ids[r]
        assert labels[i, width - len(a):].tolist() == a  # the answer ends the row
        assert (labels[i, :width - len(a)] == -100).all()
        n = len(text.prompt_ids[r]) + len(a)
        assert inputs["attention_mask"][i].sum() == n and inputs["attention_mask"][i, width - n:].all()


def _trainer(prepared, tmp_path, overrides, prompts=None):
    from safe.training.stage_a import StageATrainer

    model, fmt, train, retention = prepared
    cfg = load_stage_a_config(None, ["batch_size=6", "checkpoint_every=0", "retention_every=0", "warmup_steps=0",
                                     *ARCH, *overrides])
    return StageATrainer(model, fmt, train, retention, cfg, tmp_path, progress=False, text_prompts=prompts)


def test_the_text_kl_joins_the_retention_term_and_trains_the_adapters(prepared, tmp_path):
    model = prepared[0]
    model.set_gates(0.5)  # open: the text rows' KL is not zero
    try:
        rows = [i for i in range(32) if bool(prepared[2].needs_audio[i])][:3] + \
            [i for i in range(32) if not bool(prepared[2].needs_audio[i])][:3]
        off = _trainer(prepared, tmp_path / "off", [])._losses(rows)
        assert "text_retention" not in off
        trainer = _trainer(prepared, tmp_path / "on", ["text_retention=t.jsonl", "text_retention_rows=3",
                                                       "text_retention_weight=2.5"], PROMPTS)
        model.zero_grad(set_to_none=True)
        on = trainer._losses(rows)
        assert on["text_retention"] > 0
        for k in ("audio", "retention"):
            torch.testing.assert_close(on[k], off[k])
        lam = trainer.dual.value
        torch.testing.assert_close(on["total"], on["audio"] + lam * (on["retention"] + 2.5 * on["text_retention"]))
        on["text_retention"].backward()  # the text rows alone move the adapters (not the frozen base)
        moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert any(n.startswith("adapters.") for n in moved)
        assert not any(n.startswith("base_model.") for n in moved)
        with pytest.raises(ValueError, match="given no prompts"):
            _trainer(prepared, tmp_path / "none", ["text_retention=t.jsonl"])
    finally:
        model.set_gates(0.0)
        model.zero_grad(set_to_none=True)


def test_the_stage_reads_the_file_from_the_data_folder_and_names_it_when_missing(tiny_builtin, tmp_path):
    from safe.stages.common import StageError
    from safe.stages.stage_a import text_retention_file

    src = BuiltinSource(tiny_builtin[0])
    assert text_retention_file(None, src) is None
    with pytest.raises(StageError, match=r"stage_a.text_retention: no file 'nowhere.jsonl'"):
        text_retention_file("nowhere.jsonl", src)
    p = write_prompts(tmp_path / "abs.jsonl", PROMPTS)
    assert text_retention_file(str(p), src) == p


def test_the_gemma_track_trains_on_text_prompts_it_never_measures_on():
    from safe.bench.gemma.track_text import _sum_of, text_prompts, training_prompts

    train, held_out = training_prompts(), text_prompts()
    assert len(train) >= 200 and len({p.question for p in train}) == len(train)
    assert not {p.question for p in train} & {p.question for p in held_out}
    sums = {_sum_of(p.question) for p in held_out} - {None}
    assert sums and not {_sum_of(p.question) for p in train} & sums  # not the same sum in the other phrasing
    assert {p.kind for p in train} == {"fact", "completion", "arithmetic"}
    assert train[0].text.startswith("Question: ") and train[0].text.endswith("\nAnswer:")
