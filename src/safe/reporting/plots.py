"""Plots for the SAFE report, one function per plot, and :func:`render_plots` that draws them all.

Every plot function takes plain Python data (dicts, lists, floats) and returns the plot as PNG bytes,
or ``None`` when the data holds nothing to draw (the report then skips the plot). Values that are
``None``, NaN or not numbers are left out of a plot, never drawn as zero. Only matplotlib's object
API is used (``matplotlib.figure.Figure``), so no pyplot state, no GUI backend and no torch.
:func:`render_plots` draws every plot a run's ``metrics.json`` has data for, once, as named PNG bytes:
the report embeds those bytes and :func:`export_plots` writes the same bytes to files.
"""
from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

FIGSIZE = (6.0, 3.5)
DPI = 100
_SWEEPS = ("confidence", "entropy", "random")
_SINGLES = {"never": "s", "always": "D", "oracle": "*", "distilled": "P"}


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (None, NaN, inf, bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _figure(panels: int = 1, figsize: tuple[float, float] = FIGSIZE, ncols: int | None = None):
    """A figure with ``panels`` axes on a grid of ``ncols`` columns (default: one row)."""
    from matplotlib.figure import Figure

    ncols = ncols or panels
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=figsize, dpi=DPI)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(panels)]
    return fig, axes


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _grouped_bars(ax, groups: Mapping[str, Mapping[str, Any]], series: Sequence[str]) -> bool:
    """Draw one bar cluster per group, one bar per series present; return whether anything was drawn."""
    names = list(groups)
    present = [s for s in series if any(_num(groups[g].get(s)) is not None for g in names)]
    if not names or not present:
        return False
    width, top = 0.8 / len(present), 0.0
    for i, s in enumerate(present):
        xs, ys = [], []
        for j, g in enumerate(names):
            y = _num(groups[g].get(s))
            if y is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(y)
        ax.bar(xs, ys, width=width, label=s.replace("_", " "))
        top = max([top, *ys])
    _family_ticks(ax, names)
    if top > 0:
        ax.set_ylim(top=top * 1.25)   # room for the legend above the bars
    ax.legend(fontsize=7, ncol=len(present), loc="upper center")
    return True


def _family_ticks(ax, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 15, ha="right", fontsize=7)


def _dict_rows(groups: Any) -> dict[str, Mapping[str, Any]]:
    if not isinstance(groups, Mapping):
        return {}
    return {str(k): v for k, v in groups.items() if isinstance(v, Mapping)}


def pareto_plot(points: Sequence[Mapping[str, Any]] | None) -> bytes | None:
    """Accuracy vs mean latency (ms): PPO points per alpha (labelled), threshold sweeps of the
    confidence / entropy / random baselines as lines, and never / always / oracle / distilled as
    single markers. Points without both numbers are left out."""
    pts = [p for p in points or () if isinstance(p, Mapping)
           and _num(p.get("mean_latency_ms")) is not None and _num(p.get("accuracy")) is not None]
    if not pts:
        return None
    fig, (ax,) = _figure()
    for kind in _SWEEPS:
        sweep = sorted((_num(p["mean_latency_ms"]), _num(p["accuracy"])) for p in pts
                       if p.get("kind") == kind)
        if sweep:
            ax.plot(*zip(*sweep), marker=".", linewidth=1, label=f"{kind} threshold")
    ppo = [p for p in pts if p.get("kind") == "ppo"]
    if ppo:
        ax.scatter([p["mean_latency_ms"] for p in ppo], [p["accuracy"] for p in ppo],
                   color="black", zorder=3, label="PPO policy")
        for p in ppo:
            alpha = _num(p.get("alpha"))
            label = f"α={alpha:g}" if alpha is not None else str(p.get("name", ""))
            ax.annotate(label, (p["mean_latency_ms"], p["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    for kind, marker in _SINGLES.items():
        single = [p for p in pts if p.get("kind") == kind]
        if single:
            ax.scatter([p["mean_latency_ms"] for p in single], [p["accuracy"] for p in single],
                       marker=marker, s=50, zorder=3, label=kind)
    ax.set_xlabel("mean latency (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs latency", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    return _png(fig)


def retention_plot(per_family: Mapping[str, Mapping[str, Any]] | None) -> bytes | None:
    """Accuracy per question family: grouped bars base / gate closed / gate open / policy."""
    groups = _dict_rows(per_family)
    fig, (ax,) = _figure()
    if not _grouped_bars(ax, groups, ("base", "gate_closed", "gate_open", "policy")):
        return None
    ax.set_ylabel("accuracy")
    ax.set_title("Retention per question family", fontsize=9)
    return _png(fig)


def snr_plot(sweep: Sequence[Mapping[str, Any]] | None) -> bytes | None:
    """Audio accuracy (and VL accuracy when present) vs SNR in dB; the clean condition
    (``snr_db`` None) is drawn as a dashed horizontal line."""
    rows = [r for r in sweep or () if isinstance(r, Mapping)]
    fig, (ax,) = _figure()
    drawn = False
    for key, color in (("audio_accuracy", "tab:blue"), ("background_audio_accuracy", "tab:orange"),
                       ("vl_accuracy", "tab:green")):
        line = sorted((_num(r.get("snr_db")), _num(r.get(key))) for r in rows
                      if _num(r.get("snr_db")) is not None and _num(r.get(key)) is not None)
        if line:
            ax.plot(*zip(*line), marker="o", color=color, label=key.replace("_", " "))
            drawn = True
        clean = [_num(r.get(key)) for r in rows if r.get("snr_db") is None]
        if clean and clean[0] is not None and key != "background_audio_accuracy":  # the same clean line
            ax.axhline(clean[0], color=color, linestyle="--", linewidth=1,
                       label=f"{key.replace('_', ' ')} (clean)")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy under noise", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def attribution_plot(lomo: Mapping[str, Mapping[str, Any]] | None,
                     shapley_by_family: Mapping[str, Mapping[str, Any]] | None) -> bytes | None:
    """Left: accuracy drop per family when audio is muted (LOMO). Right: mean Shapley value of the
    image and of the audio per family. A panel without data is left out."""
    lomo_rows, shap_rows = _dict_rows(lomo), _dict_rows(shapley_by_family)
    has_lomo = any(_num(r.get("drop")) is not None for r in lomo_rows.values())
    has_shap = any(_num(r.get(k)) is not None for r in shap_rows.values() for k in ("image", "audio"))
    panels = int(has_lomo) + int(has_shap)
    if not panels:
        return None
    fig, axes = _figure(panels, figsize=(6.0 if panels == 1 else 8.0, 3.5))
    if has_lomo:
        ax = axes[0]
        names = [f for f, r in lomo_rows.items() if _num(r.get("drop")) is not None]
        ax.bar(range(len(names)), [_num(lomo_rows[f]["drop"]) for f in names], color="tab:orange")
        _family_ticks(ax, names)
        ax.set_ylabel("accuracy drop")
        ax.set_title("Muted audio (LOMO)", fontsize=9)
    if has_shap:
        ax = axes[-1]
        _grouped_bars(ax, shap_rows, ("image", "audio"))
        ax.set_ylabel("mean Shapley value")
        ax.set_title("Shapley per modality", fontsize=9)
    return _png(fig)


def _curves(rows: Sequence[Mapping[str, Any]] | None, keys: Sequence[str], x_keys: Sequence[str],
            title: str) -> bytes | None:
    """One small panel per key in ``keys`` that has at least one number, against the first x key
    present (else the row index)."""
    rows = [r for r in rows or () if isinstance(r, Mapping)]
    keys = [k for k in keys if any(_num(r.get(k)) is not None for r in rows)]
    if not keys:
        return None
    x_key = next((k for k in x_keys if any(_num(r.get(k)) is not None for r in rows)), None)
    ncols = min(len(keys), 2)
    fig, axes = _figure(len(keys), figsize=(6.0, 1.2 + 1.8 * math.ceil(len(keys) / ncols)), ncols=ncols)
    for ax, key in zip(axes, keys):
        pts = [(_num(r.get(x_key)) if x_key else i, _num(r.get(key))) for i, r in enumerate(rows)]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        ax.plot(*zip(*pts), linewidth=1.2)
        ax.set_title(key.replace("_", " "), fontsize=8)
        ax.set_xlabel(x_key or "row", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def ppo_curves_plot(history: Sequence[Mapping[str, Any]] | None) -> bytes | None:
    """PPO training curves: audio use rate, Lagrange multiplier lambda, alpha and mean reward
    against the update number (panels only for keys present)."""
    return _curves(history, ("use_rate", "lambda", "alpha", "mean_reward"), ("update", "step"),
                   "PPO training")


def stage_a_keys(history: Sequence[Mapping[str, Any]] | None, limit: int = 4) -> list[str]:
    """The numeric series worth plotting from Stage A history rows: loss / accuracy-like keys first
    (``audio_loss`` and the like), then any other numeric key, at most ``limit``; step counters excluded."""
    rows = [r for r in history or () if isinstance(r, Mapping)]
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and _num(v) is not None]
    keys = [k for k in keys if k not in ("step", "update", "epoch", "time", "seconds")]
    preferred = [k for k in keys if "loss" in k or "accuracy" in k]
    return (preferred + [k for k in keys if k not in preferred])[:limit]


def stage_a_plot(history: Sequence[Mapping[str, Any]] | None) -> bytes | None:
    """Stage A training curves for the series chosen by :func:`stage_a_keys` against the step."""
    return _curves(history, stage_a_keys(history), ("step", "update", "epoch"), "Stage A training")


# ------------------------------------------------------------------------------ from metrics.json
def _at(metrics: Any, *keys: str) -> Any:
    """``metrics[k1][k2]...`` or ``None`` when any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(metrics, Mapping):
            return None
        metrics = metrics.get(key)
    return metrics


def _rows(value: Any) -> list[Mapping]:
    """The mapping entries of a list (anything else reads as no rows)."""
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, (list, tuple)) else []


# name (the exported file's stem) -> (alt text in the report, plot drawn from the metrics), in report order
PLOTS: dict[str, tuple[str, Callable[[Mapping], bytes | None]]] = {
    "stage_a_curves": ("Stage A curves", lambda m: stage_a_plot(_rows(_at(m, "stage_a", "history")))),
    "pareto_plot": ("Pareto plot", lambda m: pareto_plot(_rows(_at(m, "policy", "pareto")))),
    "ppo_curves": ("PPO curves", lambda m: ppo_curves_plot(_rows(_at(m, "policy", "history")))),
    "retention_per_family": ("retention per family",
                             lambda m: retention_plot(_dict_rows(_at(m, "eval", "retention", "per_family")))),
    "attribution": ("attribution", lambda m: attribution_plot(
        _dict_rows(_at(m, "eval", "attribution", "lomo")), _at(m, "eval", "attribution", "shapley", "by_family"))),
    "snr_sweep": ("SNR sweep", lambda m: snr_plot(_rows(_at(m, "eval", "robustness", "snr_sweep")))),
}


def render_plots(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """Every plot ``metrics`` (a run's ``metrics.json``) holds data for, as ``{name: PNG bytes}`` in report
    order (names are the keys of :data:`PLOTS`); a plot without data is left out, never drawn empty."""
    figures = {}
    for name, (_, draw) in PLOTS.items():
        png = draw(metrics)
        if png:
            figures[name] = png
    return figures


def export_plots(metrics: Mapping[str, Any], out_dir: str | Path, *,
                 figures: Mapping[str, bytes] | None = None) -> list[Path]:
    """Write each plot of ``metrics`` to ``out_dir/<name>.png`` (``pareto_plot.png``, ...) and return the paths
    in report order. ``figures`` (from :func:`render_plots`, e.g. the ones a report just embedded) is
    written as it is instead of drawing the plots again: the files hold the report's bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in (render_plots(metrics) if figures is None else figures).items():
        path = out / f"{name}.png"
        path.write_bytes(png)
        written.append(path)
    return written
