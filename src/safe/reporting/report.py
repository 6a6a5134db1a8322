"""The SAFE report: one self-contained ``report.html`` built from a run's ``metrics.json``.

The report answers three questions for a reviewer: is the base model untouched, does audio help
where it should, and is audio skipped where it does not help. It opens with SAFE's targets (each
target beside this run's figure), then one section per stage: the safety verification as a compact
base x encoder matrix (every check folded under it), the base models, Stage A, Stages B/C and the
evaluation. Every section is rendered only from values present in the metrics; a missing section says
"not run in this report" and no number is ever invented. Plots are drawn once by
:func:`safe.reporting.plots.render_plots` and embedded as ``data:`` URIs (``--export-plots`` writes the
same bytes to files), styles are inline, there is no script and no external reference, and every string
from the metrics is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.reporting.benchmark_tables import BENCH_SECTIONS, render
from safe.reporting.format import DASH, fmt, fmt_ci, fmt_key, is_num
from safe.reporting.html import CSS, badge, details, duration, esc, grid, h3, kv_table, label, table, value
from safe.reporting.html import p as para
from safe.reporting.modalities import modality_eval_html, modality_html
from safe.reporting.plots import PLOTS, export_plots, render_plots

__all__ = ["OPTIONAL_SECTIONS", "SECTION_TITLES", "export_plots", "fmt", "fmt_ci", "fmt_key", "render_plots", "render_report",
           "report_sections", "write_report"]
Figures = Mapping[str, bytes]  # plot name -> PNG bytes, as render_plots returns them

_MODES = ("base", "gate_closed", "gate_open", "policy")
# The policy table's columns (the rest of each row is folded under it), so the table fits the page.
_POLICY_COLS = ("accuracy", "vl_accuracy", "audio_accuracy", "use_rate", "mean_latency_ms", "latency_ratio_to_base",
                "false_positive_rate")


def _get(metrics: Any, *keys: str) -> Any:
    """``metrics[k1][k2]...`` or ``None`` when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(metrics, Mapping):
            return None
        metrics = metrics.get(key)
    return metrics


def _present(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple)) and len(value) > 0


def _m(value: Any) -> Mapping:
    """``value`` if it is a mapping, else an empty one (so a malformed entry reads as missing)."""
    return value if isinstance(value, Mapping) else {}


def _maps(value: Any) -> dict[str, Mapping]:
    """The entries of a mapping whose values are mappings (e.g. per-family tables)."""
    return {str(k): v for k, v in _m(value).items() if isinstance(v, Mapping)}


def _img(figs: Figures, name: str) -> str:
    """The plot ``name`` of ``figs`` embedded as a PNG ``data:`` URI (nothing when it was not drawn)."""
    png = figs.get(name)
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(PLOTS[name][0])}">'


# ---------------------------------------------------------------------------------------- sections
def _stage_gates(m: Mapping) -> str:
    """SAFE's targets, each beside this run's figure (the stage gates the evaluation measured)."""
    gates = [g for g in _get(m, "eval", "stage_gates") or () if isinstance(g, Mapping)]
    if not gates:
        return para("Stage gates recorded, but none in the expected form.", "missing")
    rows = [[g.get("gate", DASH), g.get("target", DASH), fmt_key(str(g.get("gate", "")), g.get("measured")),
             badge(g.get("passed"))] for g in gates]
    failed = [str(g.get("gate", "?")) for g in gates if g.get("passed") is not True]
    verdict = (f"All {len(gates)} stage gates passed." if not failed
               else f"{len(failed)} of {len(gates)} stage gates failed: {', '.join(failed)}.")
    return (table(["target", "required", "this run", "result"], rows, text_cols=(0, 1, 2))
            + para(verdict, "fail" if failed else "pass"))


def _checks(checks: Any) -> list[tuple[str, Any]]:
    """(name, passed) per check, for a list of dicts or a name -> result map; [] for anything else."""
    if isinstance(checks, Mapping):
        return [(str(k), v.get("passed") if isinstance(v, Mapping) else v) for k, v in checks.items()]
    if isinstance(checks, (list, tuple)):
        return [(str(c.get("name", f"#{i}")), c.get("passed")) if isinstance(c, Mapping) else (f"#{i}", c)
                for i, c in enumerate(checks)]
    return []


def _checks_summary(checks: Any) -> str:
    """"k/n passed" plus the names of failing checks."""
    items = _checks(checks)
    if not items and not isinstance(checks, (Mapping, list, tuple)):
        return fmt(checks)
    bad = [n for n, ok in items if not ok]
    return f"{len(items) - len(bad)}/{len(items)} passed" + (f"; failed: {', '.join(bad)}" if bad else "")


def _parameters(params: Any) -> str:
    """"trainable of total (share)" from a verification entry's parameter counts."""
    total = _m(_m(params).get("total"))
    n, t = total.get("parameters"), total.get("trainable")
    if not (is_num(n) and is_num(t)) or not n:
        return DASH
    return f"{int(t):,} of {int(n):,} ({100 * t / n:.2f}%)"


def _pair(name: str) -> tuple[str, str] | None:
    """(base, encoder) of a preset pair named "base x encoder"; None for a path or a trained run."""
    base, sep, enc = name.partition(" x ")
    return (base, enc) if sep and not any(c in base + enc for c in "/\\ ") else None


def _verify(m: Mapping) -> str:
    v = m["verify"]
    models = _maps(v.get("models"))
    failed = [(n, [c for c, ok in _checks(x.get("checks")) if not ok]) for n, x in models.items()
              if x.get("passed") is not True]
    n_checks = {len(_checks(x.get("checks"))) for x in models.values()}
    each = f" ({n_checks.pop()} checks each)" if len(n_checks) == 1 else ""
    verdict = (f"All {len(models)} model pairs pass every check{each}." if not failed else
               f"{len(failed)} of {len(models)} model pairs fail: "
               + "; ".join(f"{n} ({', '.join(c) or 'see below'})" for n, c in failed) + ".")
    parts = [para("Each pair is a frozen base with an audio encoder and SAFE's parts attached: with the gate "
                  "closed the outputs must equal the base's bit for bit, with it open audio rows must change them, "
                  "and no frozen weight may move."), para(verdict, "fail" if failed else "pass")]
    pairs = {name: _pair(name) for name in models}
    bases = list(dict.fromkeys(b[0] for b in pairs.values() if b))
    encoders = list(dict.fromkeys(b[1] for b in pairs.values() if b))
    if bases:
        cell = {pair: badge(models[name].get("passed")) for name, pair in pairs.items() if pair}
        parts += [h3(f"Tiny presets: {len(bases)} base families x {len(encoders)} audio encoders"),
                  table(["base \\ encoder", *encoders], [[b, *(cell.get((b, e), DASH) for e in encoders)]
                                                          for b in bases], cls="matrix")]
    others = [name for name, pair in pairs.items() if not pair]
    if others:
        parts += [h3("This run's own models"),
                  table(["pair", "result", "checks"], [[n, badge(models[n].get("passed")),
                                                        _checks_summary(models[n].get("checks"))] for n in others],
                        text_cols=(0,))]
    rows = []
    for name, x in models.items():
        other = "; ".join(f"{label(k)} {value(k, y)}" for k, y in x.items()
                          if k not in ("passed", "checks", "seconds", "parameters"))
        rows.append([name, badge(x.get("passed")), _checks_summary(x.get("checks")),
                     _parameters(x.get("parameters")), fmt_key("seconds", x.get("seconds"))] + ([other] if other else []))
    width = max(len(r) for r in rows) if rows else 0
    rows = [r + [""] * (width - len(r)) for r in rows]
    head = ["pair", "result", "checks", "trainable parameters", "seconds", "other"][:width]
    parts.append(details(f"Every pair: its checks, trainable parameters and time ({len(models)} pairs)",
                         table(head, rows, text_cols=(0, 2, 5))))
    if not models and "passed" in v:
        parts.append(table(["all models", "result"], [["verification", badge(v.get("passed"))]]))
    return "".join(parts)


def _base(m: Mapping) -> str:
    b = m["base"]
    scalars = dict(b)
    if isinstance(b.get("audio_encoder"), Mapping):
        scalars.update({f"audio encoder {k}": v for k, v in b["audio_encoder"].items()})
    parts = [kv_table(scalars)]
    fam = b.get("test_accuracy")
    if isinstance(fam, Mapping):
        parts += [h3("Test accuracy per family"),
                  table(["family", "accuracy"], [[k, fmt(x)] for k, x in fam.items()])]
    deaf = _maps(b.get("deaf_check"))
    if deaf:
        rows = [[f, fmt(d.get("accuracy")), fmt(d.get("bound")), fmt(d.get("rule")), badge(d.get("passed"))]
                for f, d in deaf.items()]
        parts += [h3("Deaf check (VL model on audio questions)"),
                  table(["family", "accuracy", "bound", "rule", "result"], rows)]
    return "".join(parts)


def _retention(m: Mapping, figs: Figures) -> str:
    r = m["eval"]["retention"]
    acc, mc, changed = _m(r.get("vl_accuracy")), _maps(r.get("mcnemar")), _m(r.get("answers_changed"))
    n = changed.get("n")
    rows = []
    for mode in [k for k in _MODES if k in acc or k in mc or k in changed]:
        t = mc.get(mode, {})
        rows.append([mode.replace("_", " "), fmt(acc.get(mode)),
                     f"{fmt(changed.get(mode))} / {fmt(n)}" if mode in changed else DASH,
                     fmt(t.get("b")), fmt(t.get("c")), fmt(t.get("statistic")), fmt(t.get("pvalue")),
                     fmt(t.get("exact"))])
    parts = [table(["mode", "VL accuracy", "answers changed", "McNemar b", "c", "statistic", "p",
                     "exact"], rows)]
    fam = _maps(r.get("per_family"))
    if fam:
        parts += [h3("Per family"), grid(fam, list(_MODES), "family"),
                  _img(figs, "retention_per_family")]
    if isinstance(r.get("effect_size"), Mapping):
        parts += [h3("Effect size"), kv_table(r["effect_size"])]
    return "".join(parts) + _bench(r, "retention per benchmark")


def _bench(section: Mapping, *titles: str) -> str:
    """The per-benchmark tables of ``section`` named ``titles`` (:mod:`safe.reporting.benchmark_tables`)."""
    return "".join(render(f(section), lambda h, r, t=t: h3(t.capitalize()) + table(h, r), para)
                   for t, f, _ in BENCH_SECTIONS if t in titles)


def _audio_gains(m: Mapping) -> str:
    g = m["eval"]["audio_gains"]
    parts = []
    for metric in ("audio_accuracy", "caption_cider_d"):
        if isinstance(g.get(metric), Mapping):
            parts.append(table(["model", label(metric) + " (mean [95% CI])"],
                               [[label(k), fmt_ci(v)] for k, v in g[metric].items()]))
    fam = _maps(g.get("per_family"))
    if fam:
        parts += [h3("Audio accuracy per family"), grid(fam, None, "family")]
    return "".join(parts) + _bench(g, "audio gains per benchmark", "captions per benchmark")


def _efficiency(m: Mapping) -> str:
    e = m["eval"]["efficiency"]
    shape = _m(e.get("shape")).get("text")
    gates = _m(m["eval"]).get("stage_gates")
    gate = next((g for g in (gates if isinstance(gates, list) else []) if isinstance(g, Mapping)
                 and "latency" in str(g.get("gate", "")) and "measured" in g), None)
    parts = [para("Every figure below was measured on " + (shape or "the run's own model") + "."
                + (f" The latency stage gate reads {gate['measured']}." if gate else ""))]
    parts.append(kv_table({k: v for k, v in e.items() if k != "shape"}))
    lat, ratio = _maps(e.get("latency_ms")), _m(e.get("latency_ratio_to_base"))
    flops = _m(e.get("flops_per_query"))
    modes = list(dict.fromkeys([*lat, *ratio, *flops]))
    rows = [[label(mode), *(fmt(lat.get(mode, {}).get(k), 2) for k in ("median", "p95", "mean")),
             fmt(ratio.get(mode), 2), fmt(flops.get(mode))] for mode in modes]
    parts.append(table(["mode", "latency median (ms)", "p95 (ms)", "mean (ms)", "ratio to base",
                         "FLOPs / query"], rows))
    by_batch = _maps(e.get("latency_by_batch"))
    if by_batch:
        cols = ("base_mean_ms", "always_audio_mean_ms", "policy_mean_ms", "policy_to_always", "policy_to_base")
        state = _m(_m(m.get("policy")).get("config")).get("state", "cascade")  # runs before --state: cascade
        parts += [h3(f"Mean ms per query by batch size (deployed gate, {state} state, measured end to end)"),
                  table(["batch", "rows", *(label(c) for c in cols)],
                        [[b, fmt(r.get("rows")), *(fmt(r.get(c), 3) for c in cols)] for b, r in by_batch.items()])]
    for key, title in (("memory_bytes", "Memory"), ("state_cost_ms", "Cost of the policy state (ms)")):
        if isinstance(e.get(key), Mapping):
            # Entries named like a ratio ("..._fraction") are plain numbers, whatever the section's unit.
            rows = [[label(k), fmt(v) if "fraction" in k else fmt_key(key, v)] for k, v in e[key].items()]
            parts += [h3(title), table(["part", "value"], rows)]
    return "".join(parts)


def _policy(m: Mapping, figs: Figures) -> str:
    pol = m["policy"]
    parts = []
    if pol.get("collapse"):
        parts.append(para(f"Policy collapse: {pol['collapse']}", "warn"))
    rows = {"PPO policy": pol["test"]} if isinstance(pol.get("test"), Mapping) else {}
    rows.update(_maps(pol.get("baselines")))
    if rows:
        extra = [k for r in rows.values() for k, v in r.items() if is_num(v) and k not in _POLICY_COLS]
        parts += [h3("Policy vs baselines (test split)"), grid(rows, list(_POLICY_COLS), "policy"),
                  details("The other figures of each policy", grid(rows, list(dict.fromkeys(extra)), "policy"))]
    if isinstance(pol.get("oracle_gap"), Mapping):
        parts += [h3("Audio use above the oracle's, by kind of row (PPO policy, test split)"),
                  para("VL: VL questions given audio; base as good: audio questions the VL-only base already "
                       "answered as well (no state computed without hearing the clip can see these); audio no help: "
                       "audio questions audio does not fix; missed: rows where audio helps that the policy skips. "
                       "Counts are rows; the points are points of the use rate, and the gap is VL + base as good + "
                       "audio no help - missed.", "note"),
                  kv_table(pol["oracle_gap"])]
    pareto = [q for q in pol.get("pareto") or () if isinstance(q, Mapping)]
    if pareto:
        cols = ("kind", "alpha", "threshold", "accuracy", "mean_latency_ms", "use_rate", "on_front")
        parts += [h3("Accuracy / latency trade-off"), _img(figs, "pareto_plot"),
                  details(f"The {len(pareto)} points of the plot",
                          table(["name", *(label(c) for c in cols)],
                                [[q.get("name", DASH), *(fmt_key(c, q.get(c)) for c in cols)] for q in pareto]))]
    if isinstance(_get(pol, "row_costs", "test"), Mapping):
        parts += [h3("Costs per row (test table): runtime and language-model tokens, without / with audio"),
                  para(str(_get(pol, "row_costs", "model") or ""), "note"), kv_table(pol["row_costs"]["test"])]
    stress = _m(pol.get("floor_stress"))
    if isinstance(stress.get("with_dual"), Mapping) and isinstance(stress.get("without_dual"), Mapping):
        parts += [h3("Retention floor under stress: audio breaks VL rows, state blanked, with / without dual ascent"),
                  grid({k: {c: v for c, v in stress[k].items() if c != "lambda"} for k in ("with_dual", "without_dual")},
                       ["vl_accuracy", "accuracy", "use_rate", "lambda_max", "lambda_final"], "variant"),
                  kv_table({k: v for k, v in stress.items() if not isinstance(v, Mapping)})]
    history = [h for h in pol.get("history") or () if isinstance(h, Mapping)]
    if history:
        parts += [h3(f"PPO training ({len(history)} updates)"), _img(figs, "ppo_curves"),
                  details("The last update's figures", kv_table(history[-1]))]
    if isinstance(pol.get("distill"), Mapping):
        parts += [h3("Distilled gate (Stage C)"), kv_table(pol["distill"])]
    return "".join(parts)


def _attribution(m: Mapping, figs: Figures) -> str:
    a = m["eval"]["attribution"]
    lomo, shap = _maps(a.get("lomo")), _m(a.get("shapley"))
    parts = []
    if lomo:
        parts += [h3("Muted-audio accuracy drop (LOMO)"), grid(lomo, ["active", "muted", "drop"], "family")]
    if shap:
        parts += [h3("Shapley values per modality"), kv_table(shap),
                  grid(shap.get("by_family") or {}, ["image", "audio"], "family")]
    parts.append(_img(figs, "attribution"))
    return "".join(parts)


def _robustness(m: Mapping, figs: Figures) -> str:
    r = m["eval"]["robustness"]
    parts = []
    sweep = [s for s in r.get("snr_sweep") or () if isinstance(s, Mapping)]
    if sweep:
        rows = [["clean" if s.get("snr_db") is None else fmt(s.get("snr_db"), 1),
                 fmt(s.get("audio_accuracy")), fmt(s.get("background_audio_accuracy")), fmt(s.get("vl_accuracy"))]
                for s in sweep]
        parts += [h3("SNR sweep"), table(["SNR (dB)", "audio accuracy (white noise)",
                                          "audio accuracy (other clips as background)", "VL accuracy"], rows),
                  _img(figs, "snr_sweep")]
    for key, title in (("misaligned", "Misaligned audio"), ("irrelevant", "Irrelevant audio"),
                       ("ood_sounds", "Unseen sounds")):
        if isinstance(r.get(key), Mapping):
            parts += [h3(title), kv_table(r[key])]
    return "".join(parts)


def _ablations(m: Mapping) -> str:
    a = m["eval"]["ablations"]
    rows = [r for r in a.get("rows") or () if isinstance(r, Mapping)]
    numeric = list(dict.fromkeys(k for r in rows for k, v in r.items() if is_num(v)))
    variants = table(["name", "changes", *(label(c) for c in numeric)],
                     [[r.get("name", DASH), value("changes", r.get("changes")),
                       *(fmt_key(c, r.get(c)) for c in numeric)] for r in rows], text_cols=(1,))
    stage_a = m.get("ablations")
    if isinstance(stage_a, Mapping) and stage_a.get("rows"):
        return variants + _stage_a_grid(stage_a)
    return variants + (para(a["note"]) if a.get("note") else "")


def _stage_a_grid(g: Mapping) -> str:
    cols = [("audio_accuracy", "audio acc"), ("vl_accuracy_gate_open", "VL acc, gate open"),
            ("vl_answers_changed_gate_open", "VL answers changed"), ("caption_cider_d", "caption CIDEr-D")]
    rows = []
    for r in g["rows"]:
        if not isinstance(r, Mapping):
            continue
        cells = []
        for key, _ in cols:
            ci = r.get(f"{key}_ci")
            cells.append(fmt(r.get(key)) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else ""))
        rows.append([r.get("name", DASH), value("changes", r.get("changes")), fmt(r.get("seeds")), *cells,
                     fmt(r.get("trainable_parameters")), fmt(r.get("train_seconds"), 1)])
    head = (f"Stage A grid (safe ablate): {fmt(g.get('steps'))} steps per entry, {fmt(g.get('seeds'))} seed(s), "
            f"scored on {fmt(g.get('split'))}; mean [95% CI over seeds]")
    return h3(head) + table(["entry", "changes", "seeds", *(c for _, c in cols), "trainable", "train s"], rows,
                            text_cols=(1,))


def _seeds(m: Mapping) -> str:
    s = m["eval"]["seeds"]
    d = _m(s.get("cohens_d"))
    rows = []
    for name, v in _maps(s.get("metrics")).items():
        n = s.get("n", len(v.get("values") or ()))
        values = ", ".join(fmt(x) for x in v.get("values") or ())
        rows.append([label(name), f"{fmt_ci(v)} (n={fmt(n)})", values, fmt(d.get(name), 2)])
    return table(["metric", "mean [95% CI]", "values", "Cohen's d"], rows)


def _stage_a(m: Mapping, figs: Figures) -> str:
    a = m["stage_a"]
    fam = _maps(a.get("per_family"))
    per_family = [h3("Per family: base -> SAFE, gate open"), grid(fam, None, "family")] if fam else []
    return kv_table(a) + "".join(per_family) + _img(figs, "stage_a_curves")


def _plain(render: Callable[[Mapping], str]) -> Callable[[Mapping, Figures], str]:
    """A section renderer without plots, called as the ones with plots are."""
    return lambda m, figs: render(m)


# (key, title, where the data lives, renderer(metrics, figures)): the targets first, then the stages in order.
_SECTIONS: list[tuple[str, str, tuple[str, ...], Callable[[Mapping, Figures], str]]] = [
    ("stage_gates", "Targets", ("eval", "stage_gates"), _plain(_stage_gates)),
    ("verify", "Stage 1: safety verification", ("verify",), _plain(_verify)),
    ("base", "Built-in base models", ("base",), _plain(_base)),
    ("stage_a", "Stage A: projector and gated adapters", ("stage_a",), _stage_a),
    ("policy", "Stages B and C: when to use audio", ("policy",), _policy),
    ("retention", "Evaluation: retention", ("eval", "retention"), _retention),
    ("audio_gains", "Evaluation: audio gains", ("eval", "audio_gains"), _plain(_audio_gains)),
    ("efficiency", "Evaluation: efficiency", ("eval", "efficiency"), _plain(_efficiency)),
    ("attribution", "Evaluation: attribution", ("eval", "attribution"), _attribution),
    ("robustness", "Evaluation: robustness", ("eval", "robustness"), _robustness),
    ("seeds", "Evaluation: seeds", ("eval", "seeds"), _plain(_seeds)),
    ("ablations", "Ablations", ("eval", "ablations"), _plain(_ablations)),
    # present once a second modality's figures are in (the depth track's, safe report --depth-run): with audio
    # alone the section would repeat Stages B and C
    ("modalities", "Per modality", ("depth",), _plain(modality_html)),
    # a run of another modality (safe train --modality, safe policy train): its row, policy beside oracle
    ("modality_policy", "Stages B and C for another modality", ("modality_policy",), _plain(modality_html)),
    ("modality_eval", "Evaluation of another modality (safe eval)", ("modality_eval",), _plain(modality_eval_html)),
]
SECTION_TITLES = {key: title for key, title, _, _ in _SECTIONS}
OPTIONAL_SECTIONS = frozenset({"modality_policy", "modality_eval"})
"""Sections of another kind of run (``safe train --modality``): left out of a report whose metrics lack them,
rather than shown as not run."""


def report_sections(metrics: Mapping[str, Any]) -> dict[str, bool]:
    """For each report section (keys of :data:`SECTION_TITLES`, in report order), whether the
    metrics hold data for it (a non-empty dict or list at its place); an :data:`OPTIONAL_SECTIONS` section only
    where it has data."""
    present = {key: _present(_get(metrics, *where)) for key, _, where, _ in _SECTIONS}
    return {key: v for key, v in present.items() if v or key not in OPTIONAL_SECTIONS}


def _timing_rows(t: Mapping) -> list[list[str]]:
    """(step, time) rows: ``<stage>_done_seconds`` marks read "<stage> finished after"; other keys are durations."""
    rows = []
    for k, v in t.items():
        if not is_num(v):
            continue
        k = str(k)
        name = ("whole run" if k == "seconds" else
                f"{label(k.removesuffix('_done_seconds'))} finished after" if k.endswith("_done_seconds") else label(k))
        rows.append([name, duration(v)])
    return rows


def _lead(metrics: Mapping) -> str:
    """One line a reader sees first: targets met, the verification's verdict, the run's time; and the contents."""
    bits = []
    gates = [g for g in _get(metrics, "eval", "stage_gates") or () if isinstance(g, Mapping)]
    gates += [g for ev in _maps(metrics.get("modality_eval")).values()  # a run of another modality's safe eval
              for g in ev.get("stage_gates") or () if isinstance(g, Mapping)]
    if gates:
        bits.append(f"{sum(g.get('passed') is True for g in gates)} of {len(gates)} targets met")
    v = _m(metrics.get("verify"))
    if v:
        n = len(_maps(v.get("models")))
        bits.append(f"safety verification {'PASS' if v.get('passed') else 'FAIL'}"
                    + (f" on {n} model pair{'s' if n != 1 else ''}" if n else ""))
    t = metrics.get("timing")
    total = t.get("seconds") if isinstance(t, Mapping) else t
    if is_num(total):
        bits.append(f"run time {duration(total)}")
    present = report_sections(metrics)
    nav = " ".join(f'<a href="#{k}">{esc(title)}</a>' for k, title in SECTION_TITLES.items() if present.get(k))
    return (para(" · ".join(bits), "lead") if bits else "") + (f"<nav>{nav}</nav>" if nav else "")


def _timing(metrics: Mapping) -> str:
    t = metrics.get("timing")
    if isinstance(t, Mapping) and _timing_rows(t):
        return f'<section id="timing"><h2>Run time</h2>{table(["step", "time"], _timing_rows(t))}</section>'
    return ""


def _footer(metrics: Mapping) -> str:
    text = json.dumps(metrics, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return ("<details><summary>Full metrics (JSON)</summary>"
            f'<pre id="metrics-json">{html.escape(text, quote=False)}</pre></details>')


def render_report(metrics: Mapping[str, Any], title: str = "SAFE report", *,
                  figures: Figures | None = None) -> str:
    """The report as one HTML string (see :func:`write_report`); ``figures`` as :func:`render_plots`
    returns them (drawn here when not given)."""
    figs = render_plots(metrics) if figures is None else figures
    body = [f"<h1>{esc(title)}</h1>", _lead(metrics)]
    present = report_sections(metrics)
    for key, heading, _, section in _SECTIONS:
        if key not in present:  # an optional section this run has no figures for
            continue
        content = section(metrics, figs) if present[key] else para("not run in this report", "missing")
        body.append(f'<section id="{key}"><h2>{esc(heading)}</h2>{content}</section>')
    body += [_timing(metrics), _footer(metrics)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(metrics: Mapping[str, Any], path: str | os.PathLike, title: str = "SAFE report", *,
                 figures: Figures | None = None) -> Path:
    """Write the report for ``metrics`` to ``path`` and return the path. ``figures``: the plots as
    :func:`render_plots` returns them, to embed bytes already drawn (e.g. also passed to :func:`export_plots`).

    Guarantees: the file is self-contained (plots embedded as base64 PNG, inline CSS, no script, no
    external reference); every string from ``metrics`` is HTML-escaped; missing sections read "not
    run in this report"; None / NaN show as "—"; the file is written to a temporary file in the same
    folder and renamed over ``path``, so a reader never sees a half-written report.
    """
    path = Path(path)
    write_atomic(path, render_report(metrics, title, figures=figures))
    return path
