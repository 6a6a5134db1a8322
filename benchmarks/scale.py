"""SAFE's latency and memory at a given model shape, measured interleaved in one run (issue 20).

Builds a LLaVA base of the preset's shape with random weights (speed does not depend on the values),
an audio encoder, wraps them in ``SAFEModel`` with an early-state policy, and times, for each batch
size and answer length, in rotating order within every repeat (so drift hits every path alike):

* ``base``: the unwrapped base (SAFE's hooks detached);
* ``closed``: SAFE attached, no audio (the gates closed: bit-exact to the base);
* ``always``: SAFE with audio on every row (encoder + projector + adapters; features precomputed);
* ``policy``: the deployed early path (audio preview, question / image probe, the policy, one
  ``generate`` whose prefill reuses the probe's image features) at a fixed use rate: the policy's
  decision is forced through the preview so ``round(rate * batch)`` rows use audio (at batch 1 the
  figure is derived: ``rate * early_audio + (1 - rate) * skip``, from that run's medians);
* ``skip``: the same early path with every row skipped;
* ``early_audio`` (batch 1 only): the early path with its one row using audio.

Presets (``--preset``):

* ``builtin``: the shape of the demo's built-in models (``VLBuildConfig()`` / ``AudioEncoderBuildConfig()``
  defaults: LLaVA with a 64-wide 2-layer CLIP tower on 48 px images and a 128-wide 4-layer Llama;
  a 64-wide 2-layer Whisper encoder on 32 x 100 mels; the demo's SAFE recipe, stage_a_builtin.yaml);
* ``proxy``: a CPU LLaVA whose size ratios match LLaVA-1.5-7B with a CLAP-HTSAT audio tower (LM about
  245x the audio encoder, about 22x the vision tower; image tokens about 9x the text; SAFE's adapter
  width and fusion depths scaled with the LM), as large as runs in minutes on 2 CPU cores;
* ``llava7b``: the true LLaVA-1.5-7B shape (CLIP ViT-L/14-336, Vicuna-7B) with a CLAP-HTSAT audio tower
  in bfloat16, the proposal's SAFE recipe (stage_a.yaml); GPU only (``--device cuda``).
* ``gemma``: a real model, not a shape: the Gemma 3 270M VL base with its real weights (``--gemma-base``,
  default ``$SAFE_CACHE/gemma/vl``) and the real Whisper tiny.en encoder (``--audio``), float32 or bfloat16
  (``--dtype``), CPU or CUDA; the policy's default use rate is the speech track's (see ``scale_gemma.py``).

Peak memory: CUDA max allocated per path (reset before each path's calls), else the process's peak
RSS (``resource.getrusage``, one figure for the run: CPU RSS cannot be split by path in one process).

    PYTHONPATH=src python benchmarks/scale.py --preset proxy --out docs/scale_proxy.json

adds the run to that JSON file (one run per preset, device and dtype, others kept) and rewrites the markdown
tables next to it (``.md``).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's safe, first
sys.path.insert(1, str(Path(__file__).resolve().parent))  # scale_gemma, also when loaded by file path

import numpy as np  # noqa: E402
import scale_gemma  # noqa: E402
import torch  # noqa: E402
from scale_report import markdown, render  # noqa: E402  (the tables of a run, and the files they go to)

PATHS = ("base", "closed", "always", "policy", "skip", "early_audio")

# Each preset: the LLaVA base, the audio encoder, SAFE's config, the prompt's text length, clip length.
PRESETS = {
    "builtin": dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    image_size=48, patch_size=16),
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=128),
        feature_layer=-1, text_tokens=12,
        audio=dict(kind="whisper", d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                   num_mel_bins=32, max_source_positions=50),
        safe=dict(fusion_layers=[0, 1, 2, 3], num_audio_tokens=10, lora_rank=8, num_heads=4, ffn_rank=32),
        clip_samples=16000, policy_hidden=32, cpu_only=True),
    "proxy": dict(
        vision=dict(hidden_size=160, intermediate_size=448, num_hidden_layers=3, num_attention_heads=4,
                    image_size=112, patch_size=16),
        text=dict(hidden_size=448, intermediate_size=1120, num_hidden_layers=8, num_attention_heads=7,
                  num_key_value_heads=7, vocab_size=1024),
        feature_layer=-2, text_tokens=6,
        audio=dict(kind="clap", spec_size=64, num_mel_bins=16, window_size=4, patch_embeds_hidden_size=16,
                   hidden_size=64, depths=[1, 1, 1], num_heads=[2, 2, 4], patch_stride=[4, 4], patch_size=4,
                   projection_dim=32),
        # the proposal's fusion depths (8, 16, 24 of 32) and adapter width (256 of 4096) at 8 layers / 448
        safe=dict(fusion_layers=[2, 4, 6], num_audio_tokens=8, lora_rank=8, num_heads=4, attn_dim=28),
        clip_samples=16000, policy_hidden=32, cpu_only=True),
    "llava7b": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14),
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064),
        feature_layer=-2, text_tokens=64,
        audio=dict(kind="clap"),  # transformers' ClapAudioConfig defaults: HTSAT, 27.5M parameters
        safe=dict(fusion_layers=[8, 16, 24], num_audio_tokens=8, lora_rank=8, num_heads=4),
        clip_samples=480000, policy_hidden=32, cpu_only=False),
    "gemma": scale_gemma.SPEC,
}
DEFAULT_USE_RATE = 0.34  # the demo's deployed rate (the gemma preset: the speech track's)


class BenchmarkError(ValueError):
    """A bad command-line choice (device missing, preset not runnable there), named in the message."""


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def build(preset: str, device: str, dtype: torch.dtype, args=None):
    """(SAFEModel with an early-state policy attached, the preset's spec, image tokens, image token id, memory
    notes): random weights throughout, except for the ``gemma`` preset (its real weights)."""
    import transformers as tf

    from safe import SAFEConfig, SAFEModel

    _quiet()
    spec = PRESETS[preset]
    if spec.get("real"):
        default_base, default_audio = scale_gemma.default_paths()
        model, spec, n_image, image_token, memory = scale_gemma.build_gemma(
            getattr(args, "gemma_base", None) or default_base, getattr(args, "audio", None) or default_audio,
            device, dtype, warm_base=lambda base: _warm_base(base, spec_of(base), args, device, dtype),
            safe_overrides=getattr(args, "safe_override", None) or ())
        return _with_policy(model, spec), spec, n_image, image_token, memory
    v, t = spec["vision"], spec["text"]
    n_image = (v["image_size"] // v["patch_size"]) ** 2
    image_token = t["vocab_size"] - 1
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**v, projection_dim=v["hidden_size"]),
        text_config=tf.LlamaConfig(**t, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, tie_word_embeddings=False),
        image_token_id=image_token, image_seq_length=n_image, vision_feature_select_strategy="default",
        vision_feature_layer=spec["feature_layer"], projector_hidden_act="gelu")
    a = dict(spec["audio"])
    kind = a.pop("kind")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype on the target device: no 28 GB fp32 detour
    try:
        with torch.device(device):
            base = tf.LlavaForConditionalGeneration(cfg).eval()
            if kind == "whisper":
                from transformers.models.whisper.modeling_whisper import WhisperEncoder

                wcfg = tf.WhisperConfig(**a, decoder_layers=1, decoder_attention_heads=a["encoder_attention_heads"],
                                        decoder_ffn_dim=a["encoder_ffn_dim"], vocab_size=64, max_target_positions=16,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
                encoder = WhisperEncoder(wcfg).eval()
            else:
                encoder = tf.ClapAudioModelWithProjection(tf.ClapAudioConfig(enable_fusion=False, **a)).eval()
    finally:
        torch.set_default_dtype(previous)
    base.generation_config.pad_token_id, base.generation_config.eos_token_id = 0, 2
    model = SAFEModel(base, encoder, SAFEConfig(**spec["safe"]))
    return _with_policy(model, spec), spec, n_image, image_token, {}


def _with_policy(model, spec):
    from safe.policy.features import StateSpec
    from safe.policy.network import GateMLP
    from safe.policy.runtime import AudioPolicy

    model.set_gates(0.5)  # open gates: audio rows really run the adapters
    state = StateSpec(model.hidden_size, model.hidden_size, confidence_dim=0)
    model.attach_policy(AudioPolicy(state, "mlp", spec["policy_hidden"],
                                    net=_preview_gate(GateMLP(state.dim, spec["policy_hidden"]), state)))
    return model


def spec_of(base) -> dict:
    """The parts of a preset's spec :func:`vl_inputs` reads, for a loaded base (the gemma preset)."""
    v = base.config.vision_config
    return {**scale_gemma.SPEC, "vision": {"image_size": v.image_size, "patch_size": v.patch_size},
            "text": {"vocab_size": scale_gemma.text_ids(base.config)}}


def _warm_base(base, spec, args, device, dtype) -> None:
    """The base alone answers the run's largest batch at its longest answer once (its own peak RSS)."""
    if args is None:
        return
    cfg = base.config
    vl = vl_inputs(spec, int(cfg.image_seq_length), int(cfg.image_token_id), max(args.batches), device, dtype)
    n = max(args.new_tokens)
    with torch.no_grad():
        base.generate(**vl, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def _preview_gate(net, state):
    """The deployed gate's size, deciding "use audio" exactly where preview feature 0 is positive, so a
    run's use rate is set by the caller (the network's cost does not depend on its weights)."""
    with torch.no_grad():
        for p in net.net.parameters():
            p.zero_()
        net.net[0].weight[0, state.question_dim + state.image_dim] = 1.0
        net.net[2].weight.fill_(1.0)
    return net


def _audio_shape(encoder) -> tuple[int, ...]:
    cfg = encoder.config
    if hasattr(cfg, "max_source_positions"):
        return (cfg.num_mel_bins, 2 * cfg.max_source_positions)
    return (1, cfg.spec_size * max(1, cfg.spec_size // cfg.num_mel_bins), cfg.num_mel_bins)


def vl_inputs(spec, n_image: int, image_token: int, batch: int, device: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(batch)
    vocab = spec["text"]["vocab_size"]
    text = torch.randint(3, vocab - 1, (batch, spec["text_tokens"]), generator=g)
    ids = torch.cat([torch.full((batch, n_image), image_token), text], dim=1)
    size = spec["vision"]["image_size"]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device, dtype)}


def make_inputs(model, spec, n_image: int, image_token: int, batch: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(batch + 1)
    vl = vl_inputs(spec, n_image, image_token, batch, device, dtype)
    feats = torch.randn((batch, *_audio_shape(model.audio_encoder.model)), generator=g).to(device, dtype)
    wavs = [np.random.default_rng(i).standard_normal(spec["clip_samples"]).astype(np.float32) * 0.1
            for i in range(batch)]
    return vl, feats, wavs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def path_calls(model, vl, feats, wavs, gen, rate: float) -> dict:
    """Zero-argument callables, one per path (see the module docstring), on one batch."""
    from safe.processing.features import audio_preview

    n = vl["input_ids"].shape[0]
    ones = torch.ones(n, dtype=torch.bool, device=feats.device)
    k = int(round(rate * n))
    chosen = torch.zeros(n, dtype=torch.bool)
    if k:  # spread over the batch
        chosen[torch.linspace(0, n - 1, k).round().long()] = True

    def deployed(use: torch.Tensor):
        def call():
            preview = audio_preview(wavs)  # the deployed preview, timed; its feature 0 then forces the rows
            preview[:, 0] = torch.where(use, 1.0, -1.0)
            out = model.generate(**vl, **gen, audio_features=feats, audio_preview=preview)
            if not torch.equal(out.used_audio, use):
                raise RuntimeError("the forced policy did not pick the intended rows")
        return call

    def base():
        with model.hooks_detached() as b:
            b.generate(**vl, **gen)

    calls = {"base": base, "closed": lambda: model.generate(**vl, **gen),
             "always": lambda: model.generate(**vl, **gen, audio_features=feats, audio_mask=ones),
             "skip": deployed(torch.zeros(n, dtype=torch.bool))}
    if n == 1:
        calls["early_audio"] = deployed(torch.ones(1, dtype=torch.bool))
    else:
        calls["policy"] = deployed(chosen)
    return calls, (k / n if n > 1 else rate)


def measure_cell(model, vl, feats, wavs, gen, rate, repeats, warmup, device, clock=time.perf_counter) -> dict:
    calls, actual_rate = path_calls(model, vl, feats, wavs, gen, rate)
    names = list(calls)
    samples = {k: [] for k in names}
    peak = {}
    for _ in range(warmup):
        for name in names:
            calls[name]()
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no path always runs first
        for name in order:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t = clock()
            calls[name]()
            _sync(device)
            samples[name].append((clock() - t) * 1e3)
            if device == "cuda":
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
    stats = {k: {"median_ms": statistics.median(v), "p95_ms": float(np.percentile(v, 95)), "n": len(v)}
             for k, v in samples.items()}
    if "early_audio" in stats:  # batch 1: a rate is a mix of whole queries
        stats["policy"] = {"median_ms": actual_rate * stats["early_audio"]["median_ms"]
                           + (1 - actual_rate) * stats["skip"]["median_ms"],
                           "p95_ms": None, "n": 0, "derived": "rate * early_audio + (1 - rate) * skip (medians)"}
    base = stats["base"]["median_ms"]
    for k, s in stats.items():
        s["ratio_to_base"] = s["median_ms"] / base
        s["added_ms"] = s["median_ms"] - base
        if k in peak:
            s["peak_allocated_bytes"] = peak[k]
    return {"use_rate": actual_rate, "paths": stats}


def _params(*modules) -> int:
    """Parameters of ``modules`` counted once (a head tied to the embeddings, as Gemma's, is not counted twice)."""
    seen = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in seen.values())


def describe(model, spec, n_image) -> dict:
    from safe.evaluation.efficiency import safe_memory_report

    base = model.base_model
    lm = base.model.language_model
    enc = model.audio_encoder.model
    counts = {"language_model": _params(lm, base.lm_head), "vision_tower": _params(base.model.vision_tower),
              "projector": _params(base.model.multi_modal_projector), "audio_encoder": _params(enc)}
    counts["lm_to_audio_encoder"] = counts["language_model"] / counts["audio_encoder"]
    counts["lm_to_vision_tower"] = counts["language_model"] / counts["vision_tower"]
    return {"parameters": counts, "image_tokens": n_image, "text_tokens": spec["text_tokens"],
            "audio_input_shape": list(_audio_shape(enc)), "clip_samples": spec["clip_samples"],
            "safe_config": model.config.to_dict(), "memory_bytes": safe_memory_report(model)}


def flops_per_row(model, spec, n_image, image_token, device, dtype) -> dict:
    """FLOPs (PyTorch's counter) of one query's pieces at batch 1: the LM prefill, the vision tower +
    projector, and the audio encoder on one clip; their ratio is what the audio path's share of the
    latency follows once per-call overheads stop dominating."""
    from safe.evaluation.efficiency import count_flops

    vl, feats, _ = make_inputs(model, spec, n_image, image_token, 1, device, dtype)
    emb = torch.zeros(1, vl["input_ids"].shape[1], model.hidden_size, device=device, dtype=dtype)
    inner = model.base_model.model
    with model.hooks_detached():
        lm = count_flops(lambda: inner.language_model(inputs_embeds=emb))
    vision = count_flops(lambda: inner.get_image_features(pixel_values=vl["pixel_values"],
                                                          vision_feature_layer=spec["feature_layer"],
                                                          vision_feature_select_strategy="default"))
    enc = count_flops(lambda: model.audio_encoder.encode(feats))
    return {"lm_prefill": lm, "vision_and_projector": vision, "audio_encoder": enc,
            "prefill_to_audio_encoder": (lm + vision) / enc}


def run(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is "
                             "False); run the CPU presets with --device cpu")
    spec = PRESETS[args.preset]
    if args.preset == "llava7b" and args.device != "cuda":
        raise BenchmarkError("--preset llava7b needs --device cuda (the 7B shape in bfloat16 is GPU only)")
    own = torch.bfloat16 if args.preset == "llava7b" else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else own
    if args.preset != "gemma" and dtype != own:
        raise BenchmarkError(f"--dtype {args.dtype}: only the gemma preset takes another dtype than its own")
    torch.set_num_threads(args.threads)  # one thread: the only stable CPU medians on a shared machine
    load_start = _load()
    t0 = time.perf_counter()
    try:
        model, spec, n_image, image_token, base_memory = build(args.preset, args.device, dtype, args)
    except FileNotFoundError as err:
        raise BenchmarkError(str(err)) from err
    build_s = time.perf_counter() - t0
    rss_built = _rss_now()
    flops = flops_per_row(model, spec, n_image, image_token, args.device, dtype)
    cells = []
    for new_tokens in args.new_tokens:
        gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        for batch in args.batches:
            vl, feats, wavs = make_inputs(model, spec, n_image, image_token, batch, args.device, dtype)
            with torch.no_grad():
                cell = measure_cell(model, vl, feats, wavs, gen, args.use_rate, args.repeats, args.warmup, args.device,
                                    time.thread_time if args.clock == "thread" else time.perf_counter)
            cells.append({"batch": batch, "new_tokens": new_tokens, **cell})
            print(_cell_line(cells[-1]), flush=True)
    return {"preset": args.preset, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
            "threads": args.threads, "clock": args.clock, "repeats": args.repeats, "warmup": args.warmup, "use_rate": args.use_rate,
            "shape": {**describe(model, spec, n_image), "flops_per_row": flops}, "build_seconds": round(build_s, 1),
            "seconds": round(time.perf_counter() - t0, 1), "memory": {**_memory(args.device, rss_built), **base_memory},
            "machine": {"platform": platform.platform(), "cpu_count": _cpus(), "load_average": _load(),
                        "load_average_start": load_start,
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
            "date": time.strftime("%Y-%m-%d", time.gmtime()),  # the latency gate names when it was measured
            "command": " ".join(["python", *sys.argv]), "cells": cells}


def _cpus():
    import os

    return os.cpu_count()


def _load():
    import os

    return list(os.getloadavg())


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory(device: str, rss_built: int) -> dict:
    out = {"cpu_rss_after_build_bytes": rss_built,
           "cpu_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device == "cuda":
        out["cuda_note"] = "per path: peak_allocated_bytes in each cell (weights included)"
    return out


def _cell_line(c: dict) -> str:
    p = c["paths"]
    parts = [f"{k} {p[k]['median_ms']:.2f} ms ({p[k]['ratio_to_base']:.3f}x)" for k in PATHS if k in p]
    return f"batch {c['batch']:>3} new {c['new_tokens']:>3}: " + ", ".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="proxy")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--new-tokens", default="1,16", help="comma-separated answer lengths (default 1,16)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path and cell")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per path and cell first")
    p.add_argument("--use-rate", type=float, default=None,
                   help="the policy's audio-use rate (default: the demo's 0.34; gemma: the speech track's 0.5)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="the gemma preset's dtype (default float32); the others have their own")
    p.add_argument("--gemma-base", default=None, help="gemma preset: the VL base folder (default $SAFE_CACHE/gemma/vl)")
    p.add_argument("--audio", default=None, help="gemma preset: the audio encoder folder (default "
                                                  "$SAFE_CACHE/whisper-tiny.en/window-2s; missing: same shape, random)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable medians on a shared CPU)")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="wall: time.perf_counter (latency); thread: time.thread_time, the CPU time of this "
                        "thread (one torch thread: all of the work), immune to other processes on a loaded CPU")
    p.add_argument("--safe-override", action="append", default=[], metavar="KEY=VALUE",
                   help="gemma preset: a setting over SAFE's recipe, e.g. 'safe.fusion_layers=[0, -1]' (repeatable)")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: rewrite --out's markdown (and --docs's blocks) from its JSON")
    p.add_argument("--docs", help="with --out: also write this preset's runs of the file between "
                                  "<!-- scale-PRESET:start --> and <!-- scale-PRESET:end --> in this page")
    p.add_argument("--out", help="add the run to this JSON file (replacing the same preset and device) and "
                                 "write its markdown tables next to it (.md)")
    args = p.parse_args(argv)
    try:
        args.batches = [int(x) for x in args.batches.split(",") if x.strip()]
        args.new_tokens = [int(x) for x in args.new_tokens.split(",") if x.strip()]
    except ValueError:
        p.error("--batches and --new-tokens take comma-separated integers")
    if not args.batches or min(args.batches) < 1 or not args.new_tokens or min(args.new_tokens) < 1:
        p.error("--batches and --new-tokens need positive integers")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    if args.clock == "thread" and (args.device != "cpu" or args.threads != 1):
        p.error("--clock thread measures one CPU thread: it needs --device cpu --threads 1")
    if args.use_rate is None:
        args.use_rate = PRESETS[args.preset].get("default_use_rate", DEFAULT_USE_RATE)
    if not 0.0 <= args.use_rate <= 1.0 or math.isnan(args.use_rate):
        p.error(f"--use-rate must be in [0, 1], got {args.use_rate}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        if not args.out or not Path(args.out).is_file():
            print("scale.py: --render needs --out naming an existing results file", file=sys.stderr)
            return 2
        render(Path(args.out), args.docs)
        return 0
    try:
        res = run(args)
    except BenchmarkError as e:
        print(f"scale.py: {e}", file=sys.stderr)
        return 2
    print(markdown(res))
    if args.out:  # merge: one run per (preset, device, dtype) in the file, the others kept
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(out.read_text()) if out.is_file() else {"runs": []}
        key = (res["preset"], res["device"], res["dtype"])
        runs = [r for r in old.get("runs", [old]) if (r.get("preset"), r.get("device"), r.get("dtype")) != key]
        order = {name: i for i, name in enumerate(PRESETS)}
        runs = sorted([*runs, res], key=lambda r: (order.get(r["preset"], 99), r["device"]))
        out.write_text(json.dumps({"runs": runs}, indent=2))
        render(out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
