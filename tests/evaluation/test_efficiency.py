"""Tests for safe.evaluation.efficiency: numpy references, exact FLOP and byte counts by hand, and the
SAFE model skipping audio doing strictly less work."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from safe import SAFEConfig, SAFEModel
from safe.bench import presets
from safe.evaluation.efficiency import (
    count_flops,
    latency_stats,
    module_memory_bytes,
    safe_memory_report,
    time_calls,
)


# ------------------------------------------------------------------------------------ latency
class TestLatencyStats:
    def test_against_numpy(self):
        samples = np.random.default_rng(0).gamma(2.0, 3.0, size=37)
        s = latency_stats(samples.tolist())
        assert s["median"] == pytest.approx(np.median(samples), rel=1e-15)
        assert s["p95"] == pytest.approx(np.percentile(samples, 95), rel=1e-15)
        assert s["mean"] == pytest.approx(samples.mean(), rel=1e-12)
        assert s["min"] == samples.min()
        assert s["n"] == 37 and isinstance(s["n"], int)

    def test_by_hand(self):
        # 1..10: median 5.5; p95 at rank 0.95 * 9 = 8.55 -> 9 + 0.55 * (10 - 9) = 9.55
        s = latency_stats(list(range(10, 0, -1)))
        assert s == {"median": 5.5, "p95": pytest.approx(9.55), "mean": 5.5, "min": 1.0, "n": 10}

    def test_single_sample(self):
        assert latency_stats([4.0]) == {"median": 4.0, "p95": 4.0, "mean": 4.0, "min": 4.0, "n": 1}

    @pytest.mark.parametrize("bad", [[], [1.0, math.nan], [1.0, math.inf], [[1.0, 2.0]]])
    def test_rejects(self, bad):
        with pytest.raises(ValueError, match="samples_ms"):
            latency_stats(bad)


class TestTimeCalls:
    def test_counts_calls_and_returns_ms(self):
        calls = []
        samples = time_calls(lambda: calls.append(1), repeats=5, warmup=2)
        assert len(calls) == 7 and len(samples) == 5
        assert all(isinstance(x, float) and x >= 0.0 for x in samples)

    def test_measures_milliseconds(self):
        import time

        samples = time_calls(lambda: time.sleep(0.01), repeats=3, warmup=0)
        assert all(9.0 <= x < 500.0 for x in samples)

    def test_threads_set_and_restored_even_on_error(self):
        before = torch.get_num_threads()
        seen = []
        time_calls(lambda: seen.append(torch.get_num_threads()), repeats=2, warmup=1, threads=1)
        assert seen == [1, 1, 1] and torch.get_num_threads() == before

        def boom():
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            time_calls(boom, threads=1)
        assert torch.get_num_threads() == before

    def test_threads_none_leaves_setting(self):
        before = torch.get_num_threads()
        seen = []
        time_calls(lambda: seen.append(torch.get_num_threads()), repeats=1, warmup=0, threads=None)
        assert seen == [before]

    @pytest.mark.parametrize("kwargs, name", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
                                              ({"threads": 0}, "threads"), ({"repeats": 2.5}, "repeats")])
    def test_validation(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            time_calls(lambda: None, **kwargs)
        with pytest.raises(ValueError, match="fn"):
            time_calls(None)


# ------------------------------------------------------------------------------------ FLOPs
def test_flops_linear_exact():
    layer = nn.Linear(16, 32)
    x = torch.randn(4, 16)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 32


def test_flops_zero_for_elementwise_and_grad_off():
    x = torch.randn(10, requires_grad=True)
    grads = []
    assert count_flops(lambda: grads.append((x * 2).requires_grad)) == 0
    assert grads == [False]  # ran under no_grad


@pytest.fixture(scope="module")
def tiny_safe():
    base = presets.tiny_base("llava")
    enc = presets.tiny_audio_encoder("whisper")
    model = SAFEModel(base, enc, SAFEConfig(fusion_layers=[0, 1], num_audio_tokens=4, lora_rank=4))
    model.set_gates(0.5)
    model.eval()
    yield model, presets.random_vl_inputs(base, 2), presets.random_audio(enc, 2)
    model.remove_hooks()


def test_flops_safe_audio_costs_more_than_skipped(tiny_safe):
    model, vl, audio = tiny_safe
    with model.hooks_detached() as base:
        base_flops = count_flops(lambda: base(**vl))
    with_audio = count_flops(lambda: model(**vl, audio_features=audio))
    with model.audio_disabled():
        skipped = count_flops(lambda: model(**vl, audio_features=audio))
    one_row = count_flops(lambda: model(**vl, audio_features=audio, audio_mask=torch.tensor([True, False])))
    assert base_flops > 0
    assert skipped == base_flops  # audio skipped: exactly the base's work
    assert with_audio > one_row > skipped


# ------------------------------------------------------------------------------------ memory
def test_module_memory_exact_and_bf16_halves():
    layer = nn.Linear(3, 4)
    assert module_memory_bytes(layer) == (12 + 4) * 4
    assert module_memory_bytes(layer.to(torch.bfloat16)) == (12 + 4) * 2


def test_module_memory_counts_buffers_and_shared_once():
    bn = nn.BatchNorm1d(5)  # weight, bias, running_mean, running_var (float32) + num_batches_tracked (int64)
    assert module_memory_bytes(bn) == 4 * 5 * 4 + 8
    emb = nn.Embedding(10, 6)
    head = nn.Linear(6, 10, bias=False)
    head.weight = emb.weight  # tied
    assert module_memory_bytes(nn.ModuleList([emb, head])) == 60 * 4
    with pytest.raises(ValueError, match="module"):
        module_memory_bytes(torch.zeros(3))


def test_safe_memory_report(tiny_safe):
    model, _, _ = tiny_safe
    r = safe_memory_report(model)
    assert r["base"] == module_memory_bytes(model.base_model) > 0
    assert r["audio_encoder"] == module_memory_bytes(model.audio_encoder) > 0
    # all float32 here: bytes = 4 * parameters (+ buffers) of SAFE's parts
    report = model.parameter_report()
    n_safe = report["projector"]["parameters"] + report["adapters"]["parameters"]
    n_buf = sum(b.numel() for m in model.safe_modules().values() for b in m.buffers())
    assert r["safe_parts"] == 4 * (n_safe + n_buf)
    assert r["safe_parts_fraction"] == pytest.approx(r["safe_parts"] / (r["base"] + r["audio_encoder"]))
    assert 0 < r["safe_parts_fraction"] < 1
    with pytest.raises(ValueError, match="model"):
        safe_memory_report(nn.Linear(2, 2))
