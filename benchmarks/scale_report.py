"""The markdown tables of a ``benchmarks/scale.py`` run (its JSON result): one table per run, the shape, the
load it was measured under, and the memory figures (CUDA per path, or the process's RSS on a CPU)."""
from __future__ import annotations

import json
from pathlib import Path


def markdown(res: dict) -> str:
    sh = res["shape"]
    pc = sh["parameters"]
    mem = sh["memory_bytes"]
    clock = "CPU time of the one torch thread (time.thread_time)" if res.get("clock") == "thread" else "wall clock"
    lines = [f"### `{res['preset']}` on {res['device']} ({res['dtype']}, {res['threads']} thread(s), {clock})", "",
             f"Command: `{res['command']}`  ", f"Load average at the end (1, 5, 15 min): "
             f"{', '.join(f'{x:.2f}' for x in res['machine']['load_average'])}; {res['repeats']} timed repeats "
             f"after {res['warmup']} warm-up per cell, paths interleaved in rotating order.", "",
             f"Shape: LM {pc['language_model']:,} parameters, vision tower {pc['vision_tower']:,}, audio encoder "
             f"{pc['audio_encoder']:,} (LM / audio encoder {pc['lm_to_audio_encoder']:.0f}x, LM / vision "
             f"{pc['lm_to_vision_tower']:.1f}x); {sh['image_tokens']} image + {sh['text_tokens']} text tokens; "
             f"FLOPs of a batch-1 prefill (LM + vision) / one clip through the audio encoder "
             f"{sh['flops_per_row']['prefill_to_audio_encoder']:.0f}x; "
             f"SAFE parts {mem['safe_parts']:,} bytes ({100 * mem['safe_parts_fraction']:.3f}% of the frozen "
             f"models), audio encoder {mem['audio_encoder']:,} bytes.", "",
             "| batch | new tokens | base ms (p95) | closed / base | always / base | policy / base (use rate) "
             "| skip-all / base | added ms: closed / always / policy / skip |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in res["cells"]:
        p = c["paths"]
        pol = p["policy"]
        lines.append(
            f"| {c['batch']} | {c['new_tokens']} | {p['base']['median_ms']:.2f} ({p['base']['p95_ms']:.2f}) "
            f"| {p['closed']['ratio_to_base']:.3f} | {p['always']['ratio_to_base']:.3f} "
            f"| {pol['ratio_to_base']:.3f} ({c['use_rate']:.3f}){' *' if pol.get('derived') else ''} "
            f"| {p['skip']['ratio_to_base']:.3f} | {p['closed']['added_ms']:+.2f} / {p['always']['added_ms']:+.2f} / "
            f"{pol['added_ms']:+.2f} / {p['skip']['added_ms']:+.2f} |")
    lines.append("")
    if any("early_audio" in c["paths"] for c in res["cells"]):
        lines.append("\\* batch 1: the use rate mixes whole queries, so the policy figure is "
                     "rate x early-audio + (1 - rate) x skip-all, from the same run's medians "
                     + ", ".join(f"early-audio / base {c['paths']['early_audio']['ratio_to_base']:.3f} "
                                 f"({c['new_tokens']} new)" for c in res["cells"] if "early_audio" in c["paths"]) + ".")
    m = res["memory"]
    if res["device"] == "cuda":
        last = res["cells"][-1]["paths"]
        lines.append("Peak CUDA memory allocated (weights included), per path at the last cell: " + ", ".join(
            f"{k} {v['peak_allocated_bytes'] / 2**20:.0f} MiB" for k, v in last.items()
            if "peak_allocated_bytes" in v) + ".")
        added = (mem["safe_parts"] + mem["audio_encoder"]
                 + max(0, last["always"]["peak_allocated_bytes"] - last["base"]["peak_allocated_bytes"]))
        lines.append(f"SAFE parts + audio encoder + the always-audio path's extra peak over the base's: "
                     f"{added / 2**20:.0f} MiB (the proposal: <= 750 MB).")
    elif "cpu_peak_rss_base_alone_bytes" in m:
        lines.append(f"Memory: SAFE's parts {mem['safe_parts'] / 1e6:.1f} MB and the audio encoder "
                     f"{mem['audio_encoder'] / 1e6:.1f} MB of weights; process peak RSS with the base alone (loaded, "
                     f"then its largest batch answered, before SAFE is attached) "
                     f"{m['cpu_peak_rss_base_alone_bytes'] / 2**20:.0f} MiB, with SAFE over every path of the run "
                     f"{m['cpu_peak_rss_bytes'] / 2**20:.0f} MiB.")
    else:
        lines.append(f"Process RSS after building {m['cpu_rss_after_build_bytes'] / 2**20:.0f} MiB, peak over the "
                     f"run {m['cpu_peak_rss_bytes'] / 2**20:.0f} MiB (CPU RSS is one figure per process).")
    return "\n".join(lines) + "\n"


def render(out: Path, docs: str | None) -> None:
    """Rewrite ``out``'s markdown (``.md``) from its runs and, with ``docs``, each preset's block in that page."""
    runs = json.loads(out.read_text())["runs"]
    out.with_suffix(".md").write_text("\n".join(markdown(r) for r in runs))
    if docs:  # each preset's runs of this file, between its markers in that page (where the page has them)
        from safe.bench.speech.docs import splice

        page = Path(docs)
        text = page.read_text()
        for preset in dict.fromkeys(r["preset"] for r in runs):
            start, end = f"<!-- scale-{preset}:start -->", f"<!-- scale-{preset}:end -->"
            if start in text:
                text = splice(text, "\n".join(markdown(r) for r in runs if r["preset"] == preset), start, end)
        page.write_text(text)
