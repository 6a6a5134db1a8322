"""The SAFE report: one self-contained ``report.html`` built from a run's ``metrics.json``.

The report answers three questions for a reviewer: is the base model untouched, does audio help
where it should, and is audio skipped where it does not help. Every section is rendered only from
values present in the metrics; a missing section says "not run in this report" and no number is
ever invented. Plots are drawn once by :func:`safe.evaluation.plots.render_plots` and embedded as
``data:`` URIs (``--export-plots`` writes the same bytes to files), styles are inline, there is no
script and no external reference, and every string from the metrics is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from safe.evaluation.plots import PLOTS, export_plots, render_plots

__all__ = ["SECTION_TITLES", "export_plots", "fmt", "fmt_ci", "fmt_key", "render_plots", "render_report",
           "report_sections", "write_report"]
Figures = Mapping[str, bytes]  # plot name -> PNG bytes, as render_plots returns them

DASH = "—"
_MODES = ("base", "gate_closed", "gate_open", "policy")
_POLICY_COLS = ("accuracy", "vl_accuracy", "audio_accuracy", "use_rate", "mean_latency_ms",
                "latency_ratio_to_base", "false_positive_rate", "oracle_accuracy", "oracle_use_rate",
                "base_accuracy")
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.pass{background:#d7f5d7;color:#105010;font-weight:600}
.fail{background:#fbd5d5;color:#801010;font-weight:600}
.missing{color:#888;font-style:italic} .warn{color:#a05000;font-weight:600}
img{display:block;margin:.6em 0;max-width:100%} pre{font-size:.8em;white-space:pre-wrap}
"""


class _Html(str):
    """A string that is already HTML (a table cell that must not be escaped again)."""


# ---------------------------------------------------------------------------------------- values
def _is_num(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fmt(value: Any, digits: int = 3) -> str:
    """Format one value for a table: None / NaN / inf -> "—", bools -> yes/no, integers as they
    are, floats with ``digits`` decimals (very large ones in scientific notation), anything else
    as text. The result is plain text, not yet escaped."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if _is_num(value):
        value = float(value)
        if not math.isfinite(value):
            return DASH
        if abs(value) >= 1e5 or 0 < abs(value) < 0.5 * 10**-digits:
            return f"{value:.3g}"   # very large or very small: keep significant digits
        return f"{value:.{digits}f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def fmt_key(key: str, value: Any) -> str:
    """Format ``value`` using its key for the unit: milliseconds and seconds with 2 decimals,
    bytes in MiB, everything else as :func:`fmt` (fractions with 3 decimals)."""
    k = key.lower()
    if _is_num(value) and "bytes" in k and math.isfinite(float(value)):
        return f"{float(value) / 2**20:.2f} MiB"
    if k.endswith("_ms") or k == "ms" or "latency" in k or "second" in k or k.endswith("_s"):
        return fmt(value, 2)
    return fmt(value)


def fmt_ci(d: Any, digits: int = 3) -> str:
    """``{"mean", "ci_low", "ci_high"}`` as "0.938 [0.910, 0.960]" (a bare number as itself)."""
    if not isinstance(d, Mapping):
        return fmt(d, digits)
    text = fmt(d.get("mean"), digits)
    if "ci_low" in d or "ci_high" in d:
        text += f" [{fmt(d.get('ci_low'), digits)}, {fmt(d.get('ci_high'), digits)}]"
    return text


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


# ------------------------------------------------------------------------------------ HTML pieces
def _esc(text: Any) -> str:
    return text if isinstance(text, _Html) else html.escape(str(text))


def _badge(passed: Any) -> _Html:
    if passed is None:
        return _Html(DASH)
    return _Html('<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped unless they are :class:`_Html`."""
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv_table(d: Any, keys: Sequence[str] | None = None, header: str = "value") -> str:
    """A two-column table of the scalar entries of ``d`` (all of them, or ``keys`` in that order)."""
    if not isinstance(d, Mapping):
        return ""
    keys = [k for k in (keys or d) if k in d and not isinstance(d[k], (Mapping, list, tuple))]
    return _table(["", header], [[k, fmt_key(k, d[k])] for k in keys])


def _grid(groups: Mapping[str, Mapping], columns: Sequence[str] | None = None, first: str = "",
          cell: Callable[[str, Any], str] = fmt_key) -> str:
    """A table with one row per group and one column per key present in any group."""
    groups = _maps(groups)
    if columns is None:
        columns = []
        for g in groups.values():
            columns += [k for k in g if k not in columns]
    columns = [c for c in columns if any(c in g for g in groups.values())]
    rows = [[name] + [cell(c, g.get(c)) for c in columns] for name, g in groups.items()]
    return _table([first] + [c.replace("_", " ") for c in columns], rows)


def _img(figs: Figures, name: str) -> str:
    """The plot ``name`` of ``figs`` embedded as a PNG ``data:`` URI (nothing when it was not drawn)."""
    png = figs.get(name)
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(PLOTS[name][0])}">'


def _p(text: Any, cls: str = "") -> str:
    return f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>"


def _h3(text: str) -> str:
    return f"<h3>{_esc(text)}</h3>"


# ---------------------------------------------------------------------------------------- sections
def _stage_gates(m: Mapping) -> str:
    gates = [g for g in _get(m, "eval", "stage_gates") or () if isinstance(g, Mapping)]
    if not gates:
        return _p("Stage gates recorded, but none in the expected form.", "missing")
    rows = [[g.get("gate", DASH), g.get("target", DASH), fmt_key(str(g.get("gate", "")), g.get("measured")),
             _badge(g.get("passed"))] for g in gates]
    failed = [str(g.get("gate", "?")) for g in gates if g.get("passed") is not True]
    verdict = (f"All {len(gates)} stage gates passed." if not failed
               else f"{len(failed)} of {len(gates)} stage gates failed: {', '.join(failed)}.")
    return _table(["gate", "target", "measured", "result"], rows) + _p(verdict, "fail" if failed else "pass")


def _checks_summary(checks: Any) -> str:
    """"k/n passed" plus the names of failing checks, for a list of dicts or a name -> result map."""
    if isinstance(checks, Mapping):
        items = [(k, v.get("passed") if isinstance(v, Mapping) else v) for k, v in checks.items()]
    elif isinstance(checks, (list, tuple)):
        items = [(c.get("name", f"#{i}"), c.get("passed")) if isinstance(c, Mapping) else (f"#{i}", c)
                 for i, c in enumerate(checks)]
    else:
        return fmt(checks)
    bad = [str(n) for n, ok in items if not ok]
    return f"{len(items) - len(bad)}/{len(items)} passed" + (f"; failed: {', '.join(bad)}" if bad else "")


def _verify(m: Mapping) -> str:
    v = m["verify"]
    rows = []
    for name, model in _maps(v.get("models")).items():
        extra = "; ".join(f"{k}={fmt_key(k, x)}" for k, x in model.items()
                          if k not in ("passed", "checks", "seconds"))
        rows.append([name, _badge(model.get("passed")), _checks_summary(model.get("checks")),
                     fmt_key("seconds", model.get("seconds")), extra])
    overall = _table(["overall", "result"], [["all models", _badge(v.get("passed"))]])
    return overall + _table(["model", "result", "checks", "seconds", "other"], rows) + \
        _kv_table({k: x for k, x in v.items() if k not in ("passed", "models")})


def _base(m: Mapping) -> str:
    b = m["base"]
    scalars = dict(b)
    if isinstance(b.get("audio_encoder"), Mapping):
        scalars.update({f"audio encoder {k}": v for k, v in b["audio_encoder"].items()})
    parts = [_kv_table(scalars)]
    fam = b.get("test_accuracy")
    if isinstance(fam, Mapping):
        parts += [_h3("Test accuracy per family"),
                  _table(["family", "accuracy"], [[k, fmt(x)] for k, x in fam.items()])]
    deaf = _maps(b.get("deaf_check"))
    if deaf:
        rows = [[f, fmt(d.get("accuracy")), fmt(d.get("bound")), fmt(d.get("rule")), _badge(d.get("passed"))]
                for f, d in deaf.items()]
        parts += [_h3("Deaf check (VL model on audio questions)"),
                  _table(["family", "accuracy", "bound", "rule", "result"], rows)]
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
    parts = [_table(["mode", "VL accuracy", "answers changed", "McNemar b", "c", "statistic", "p",
                     "exact"], rows)]
    fam = _maps(r.get("per_family"))
    if fam:
        parts += [_h3("Per family"), _grid(fam, list(_MODES), "family"),
                  _img(figs, "retention_per_family")]
    if isinstance(r.get("effect_size"), Mapping):
        parts += [_h3("Effect size"), _kv_table(r["effect_size"])]
    return "".join(parts) + _bench(r, "retention per benchmark")


def _bench(section: Mapping, *titles: str) -> str:
    """The per-benchmark tables of ``section`` named ``titles`` (:mod:`safe.evaluation.benchmark_tables`)."""
    from safe.evaluation.benchmark_tables import BENCH_SECTIONS, render  # it imports this module

    return "".join(render(f(section), lambda h, r, t=t: _h3(t.capitalize()) + _table(h, r), _p)
                   for t, f, _ in BENCH_SECTIONS if t in titles)


def _audio_gains(m: Mapping) -> str:
    g = m["eval"]["audio_gains"]
    parts = []
    for metric in ("audio_accuracy", "caption_cider_d"):
        if isinstance(g.get(metric), Mapping):
            parts.append(_table(["model", metric.replace("_", " ") + " (mean [95% CI])"],
                                [[k, fmt_ci(v)] for k, v in g[metric].items()]))
    fam = _maps(g.get("per_family"))
    if fam:
        parts += [_h3("Audio accuracy per family"), _grid(fam, None, "family")]
    return "".join(parts) + _bench(g, "audio gains per benchmark", "captions per benchmark")


def _efficiency(m: Mapping) -> str:
    e = m["eval"]["efficiency"]
    shape = _m(e.get("shape")).get("text")
    gates = _m(m["eval"]).get("stage_gates")
    gate = next((g for g in (gates if isinstance(gates, list) else []) if isinstance(g, Mapping)
                 and "latency" in str(g.get("gate", "")) and "measured" in g), None)
    parts = [_p("Every figure below was measured on " + (shape or "the run's own model") + "."
                + (f" The latency stage gate reads {gate['measured']}." if gate else ""))]
    parts.append(_kv_table({k: v for k, v in e.items() if k != "shape"}))
    lat, ratio = _maps(e.get("latency_ms")), _m(e.get("latency_ratio_to_base"))
    flops = _m(e.get("flops_per_query"))
    modes = list(dict.fromkeys([*lat, *ratio, *flops]))
    rows = [[mode, *(fmt(lat.get(mode, {}).get(k), 2) for k in ("median", "p95", "mean")),
             fmt(ratio.get(mode), 2), fmt(flops.get(mode))] for mode in modes]
    parts.append(_table(["mode", "latency median (ms)", "p95 (ms)", "mean (ms)", "ratio to base",
                         "FLOPs / query"], rows))
    by_batch = _maps(e.get("latency_by_batch"))
    if by_batch:
        cols = ("base_mean_ms", "always_audio_mean_ms", "policy_mean_ms", "policy_to_always", "policy_to_base")
        state = _m(_m(m.get("policy")).get("config")).get("state", "cascade")  # runs before --state: cascade
        parts += [_h3(f"Mean ms per query by batch size (deployed gate, {state} state, measured end to end)"),
                  _table(["batch", "rows", *cols], [[b, fmt(r.get("rows")), *(fmt(r.get(c), 3) for c in cols)]
                                                    for b, r in by_batch.items()])]
    for key, title in (("memory_bytes", "Memory"), ("state_cost_ms", "Cost of the policy state (ms)")):
        if isinstance(e.get(key), Mapping):
            # Entries named like a ratio ("..._fraction") are plain numbers, whatever the section's unit.
            rows = [[k, fmt(v) if "fraction" in k else fmt_key(key, v)] for k, v in e[key].items()]
            parts += [_h3(title), _table(["part", "value"], rows)]
    return "".join(parts)


def _policy(m: Mapping, figs: Figures) -> str:
    p = m["policy"]
    parts = []
    if p.get("collapse"):
        parts.append(_p(f"Policy collapse: {p['collapse']}", "warn"))
    rows = {"PPO policy": p["test"]} if isinstance(p.get("test"), Mapping) else {}
    rows.update(_maps(p.get("baselines")))
    if rows:
        extra = [k for r in rows.values() for k, v in r.items() if _is_num(v) and k not in _POLICY_COLS]
        columns = [*_POLICY_COLS, *dict.fromkeys(extra)]
        parts += [_h3("Policy vs baselines (test split)"), _grid(rows, columns, "policy")]
    if isinstance(p.get("oracle_gap"), Mapping):
        parts += [_h3("Audio use above the oracle's, by kind of row (PPO policy, test split)"),
                  _p("vl: VL questions given audio; base_as_good: audio questions the VL-only base already "
                     "answered as well (no state computed without hearing the clip can see these); audio_no_help: "
                     "audio questions audio does not fix; missed: rows where audio helps that the policy skips. "
                     "Counts are rows; the *_points values are points of the use rate, and gap_points = "
                     "vl_points + base_as_good_points + audio_no_help_points - missed_points."),
                  _kv_table(p["oracle_gap"])]
    pareto = [q for q in p.get("pareto") or () if isinstance(q, Mapping)]
    if pareto:
        cols = ("kind", "alpha", "threshold", "accuracy", "mean_latency_ms", "use_rate", "on_front")
        parts += [_h3("Accuracy / latency trade-off"), _img(figs, "pareto_plot"),
                  _table(["name", *(c.replace("_", " ") for c in cols)],
                         [[q.get("name", DASH), *(fmt_key(c, q.get(c)) for c in cols)] for q in pareto])]
    history = [h for h in p.get("history") or () if isinstance(h, Mapping)]
    if history:
        parts += [_h3(f"PPO training ({len(history)} updates; last row below)"),
                  _img(figs, "ppo_curves"), _kv_table(history[-1])]
    if isinstance(p.get("distill"), Mapping):
        parts += [_h3("Distilled gate (Stage C)"), _kv_table(p["distill"])]
    return "".join(parts)


def _attribution(m: Mapping, figs: Figures) -> str:
    a = m["eval"]["attribution"]
    lomo, shap = _maps(a.get("lomo")), _m(a.get("shapley"))
    parts = []
    if lomo:
        parts += [_h3("Muted-audio accuracy drop (LOMO)"), _grid(lomo, ["active", "muted", "drop"], "family")]
    if shap:
        parts += [_h3("Shapley values per modality"), _kv_table(shap),
                  _grid(shap.get("by_family") or {}, ["image", "audio"], "family")]
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
        parts += [_h3("SNR sweep"), _table(["SNR (dB)", "audio accuracy (white noise)",
                                            "audio accuracy (other clips as background)", "VL accuracy"], rows),
                  _img(figs, "snr_sweep")]
    for key, title in (("misaligned", "Misaligned audio"), ("irrelevant", "Irrelevant audio"),
                       ("ood_sounds", "Unseen sounds")):
        if isinstance(r.get(key), Mapping):
            parts += [_h3(title), _kv_table(r[key])]
    return "".join(parts)


def _ablations(m: Mapping) -> str:
    a = m["eval"]["ablations"]
    rows = [r for r in a.get("rows") or () if isinstance(r, Mapping)]
    numeric = list(dict.fromkeys(k for r in rows for k, v in r.items() if _is_num(v)))
    table = _table(["name", "changes", *(c.replace("_", " ") for c in numeric)],
                   [[r.get("name", DASH), fmt(r.get("changes")), *(fmt_key(c, r.get(c)) for c in numeric)]
                    for r in rows])
    grid = m.get("ablations")
    if isinstance(grid, Mapping) and grid.get("rows"):
        return table + _stage_a_grid(grid)
    return table + (_p(a["note"]) if a.get("note") else "")


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
        rows.append([r.get("name", DASH), fmt(r.get("changes")), fmt(r.get("seeds")), *cells,
                     fmt(r.get("trainable_parameters")), fmt(r.get("train_seconds"), 1)])
    head = (f"Stage A grid (safe ablate): {fmt(g.get('steps'))} steps per entry, {fmt(g.get('seeds'))} seed(s), "
            f"scored on {fmt(g.get('split'))}; mean [95% CI over seeds]")
    return _h3(head) + _table(["entry", "changes", "seeds", *(c for _, c in cols), "trainable", "train s"], rows)


def _seeds(m: Mapping) -> str:
    s = m["eval"]["seeds"]
    d = _m(s.get("cohens_d"))
    rows = []
    for name, v in _maps(s.get("metrics")).items():
        n = s.get("n", len(v.get("values") or ()))
        values = ", ".join(fmt(x) for x in v.get("values") or ())
        rows.append([name, f"{fmt_ci(v)} (n={fmt(n)})", values, fmt(d.get(name), 2)])
    return _table(["metric", "mean [95% CI]", "values", "Cohen's d"], rows)


def _stage_a(m: Mapping, figs: Figures) -> str:
    a = m["stage_a"]
    return _kv_table(a) + _img(figs, "stage_a_curves")


def _plain(render: Callable[[Mapping], str]) -> Callable[[Mapping, Figures], str]:
    """A section renderer without plots, called as the ones with plots are."""
    return lambda m, figs: render(m)


# (key, title, where the data lives, renderer(metrics, figures))
_SECTIONS: list[tuple[str, str, tuple[str, ...], Callable[[Mapping, Figures], str]]] = [
    ("stage_gates", "Stage gates", ("eval", "stage_gates"), _plain(_stage_gates)),
    ("verify", "Safety verification", ("verify",), _plain(_verify)),
    ("base", "Base models", ("base",), _plain(_base)),
    ("retention", "Retention", ("eval", "retention"), _retention),
    ("audio_gains", "Audio gains", ("eval", "audio_gains"), _plain(_audio_gains)),
    ("efficiency", "Efficiency", ("eval", "efficiency"), _plain(_efficiency)),
    ("policy", "Stage B/C policy", ("policy",), _policy),
    ("attribution", "Attribution", ("eval", "attribution"), _attribution),
    ("robustness", "Robustness", ("eval", "robustness"), _robustness),
    ("ablations", "Ablations", ("eval", "ablations"), _plain(_ablations)),
    ("seeds", "Seeds", ("eval", "seeds"), _plain(_seeds)),
    ("stage_a", "Stage A", ("stage_a",), _stage_a),
]
SECTION_TITLES = {key: title for key, title, _, _ in _SECTIONS}


def report_sections(metrics: Mapping[str, Any]) -> dict[str, bool]:
    """For each report section (keys of :data:`SECTION_TITLES`, in report order), whether the
    metrics hold data for it (a non-empty dict or list at its place)."""
    return {key: _present(_get(metrics, *where)) for key, _, where, _ in _SECTIONS}


def _timing(metrics: Mapping) -> str:
    t = metrics.get("timing")
    if isinstance(t, Mapping):
        return _p("Time: " + " · ".join(f"{k} {fmt(v, 1)} s" for k, v in t.items() if _is_num(v)))
    return _p(f"Time: {fmt(t, 1)} s") if _is_num(t) else ""


def _footer(metrics: Mapping) -> str:
    text = json.dumps(metrics, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return ("<details><summary>Full metrics (JSON)</summary>"
            f'<pre id="metrics-json">{html.escape(text, quote=False)}</pre></details>')


def render_report(metrics: Mapping[str, Any], title: str = "SAFE report", *,
                  figures: Figures | None = None) -> str:
    """The report as one HTML string (see :func:`write_report`); ``figures`` as :func:`render_plots`
    returns them (drawn here when not given)."""
    figs = render_plots(metrics) if figures is None else figures
    body = [f"<h1>{_esc(title)}</h1>", _timing(metrics)]
    present = report_sections(metrics)
    for key, heading, _, render in _SECTIONS:
        content = render(metrics, figs) if present[key] else _p("not run in this report", "missing")
        body.append(f'<section id="{key}"><h2>{_esc(heading)}</h2>{content}</section>')
    body.append(_footer(metrics))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(metrics: Mapping[str, Any], path: str | os.PathLike, title: str = "SAFE report", *,
                 figures: Figures | None = None) -> Path:
    """Write the report for ``metrics`` to ``path`` and return the path. ``figures``: the plots as
    :func:`render_plots` returns them, to embed bytes already drawn (e.g. also passed to :func:`export_plots`).

    Guarantees: the file is self-contained (plots embedded as base64 PNG, inline CSS, no script, no
    external reference); every string from ``metrics`` is HTML-escaped; missing sections read "not
    run in this report"; None / NaN show as "—"; the file is written to a temporary file in the same
    folder and renamed over ``path``, so a reader never sees a half-written report.
    """
    from safe.evaluation.docs import write_atomic

    path = Path(path)
    write_atomic(path, render_report(metrics, title, figures=figures))
    return path
