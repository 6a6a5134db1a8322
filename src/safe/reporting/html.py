"""The HTML pieces of the report: escaped cells, tables that fit the page, folded details, and readable labels
for the metric keys ``metrics.json`` uses (``policy_done_seconds`` -> "policy done (s)"), so no raw key name or
dict reaches a cell. Plain strings only; every text from the metrics is escaped unless marked :class:`Html`."""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from safe.reporting.format import DASH, fmt, fmt_key, is_num

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.lead{font-size:1.1em} nav{font-size:.9em;color:#555} nav a{color:#155;margin-right:.6em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right;vertical-align:top} th{background:#f3f3f3}
td:first-child,th:first-child,th.text{text-align:left} td.text{text-align:left;max-width:28em}
table.matrix td,table.matrix th{text-align:center;padding:.15em .35em} table.matrix td:first-child{text-align:left}
.pass{background:#d7f5d7;color:#105010;font-weight:600}
.fail{background:#fbd5d5;color:#801010;font-weight:600}
.missing{color:#888;font-style:italic} .warn{color:#a05000;font-weight:600} .note{color:#555;font-size:.9em}
details{margin:.6em 0} summary{cursor:pointer;color:#155}
img{display:block;margin:.6em 0;max-width:100%} pre{font-size:.8em;white-space:pre-wrap}
"""

# Words that read better in their usual spelling than as the key has them; units get brackets at the end.
_WORDS = {"vl": "VL", "ppo": "PPO", "kl": "KL", "lr": "learning rate", "cider": "CIDEr", "d": "D", "bleu": "BLEU",
          "bleu2": "BLEU-2", "rouge": "ROUGE", "meteor": "METEOR", "snr": "SNR", "db": "dB", "flops": "FLOPs",
          "fp": "FP", "sha256": "SHA-256", "ci": "CI", "mlp": "MLP", "id": "ID", "params": "parameters",
          "lomo": "LOMO", "safe": "SAFE"}
_UNITS = {"ms": "(ms)", "s": "(s)", "seconds": "(s)", "bytes": "(bytes)"}
LABELS = {
    "seconds": "time (s)", "vl_accuracy": "VL accuracy", "audio_accuracy": "audio accuracy",
    "use_rate": "audio-use rate", "oracle_use_rate": "oracle audio-use rate", "mean_latency_ms": "mean ms / query",
    "latency_ratio_to_base": "latency / base", "false_positive_rate": "VL rows using audio",
    "base_accuracy": "base accuracy", "overhead_ms": "added ms / query", "audio_use_rate": "audio-use rate",
    "caption_cider_d": "caption CIDEr-D", "tag_exact_match": "tag sets exactly right",
    "frozen_byte_identical": "frozen weights byte-identical", "cohens_dz_gate_open": "Cohen's dz, gate open",
    "approx_kl": "approx. KL", "clipfrac": "clipped fraction", "mean_reward": "mean reward",
    # the stages, as the run time names them
    "verify": "Stage 1 verification", "base": "base models", "stage_a": "Stage A", "policy": "Stages B and C",
    "eval": "evaluation",
}


def label(key: Any) -> str:
    """A metric key as a reader would name it: :data:`LABELS` when listed, else its words with units spelled
    out (``policy_done_seconds`` -> "policy done (s)", ``vl_accuracy_gate_open`` -> "VL accuracy gate open")."""
    key = str(key)
    if key in LABELS:
        return LABELS[key]
    words = [w for w in re.split(r"[_\s]+", key) if w]
    out = [_WORDS.get(w.lower(), w) for w in words]
    if len(out) > 1 and words[-1].lower() in _UNITS:
        out[-1] = _UNITS[words[-1].lower()]
    return " ".join(out).replace("CIDEr D", "CIDEr-D") or key


class Html(str):
    """A string that is already HTML (a table cell that must not be escaped again)."""


def esc(text: Any) -> str:
    return text if isinstance(text, Html) else html.escape(str(text))


def value(key: str, v: Any) -> str:
    """One cell's text: a number by its key's unit (:func:`fmt_key`), a mapping as "label value; ..." and a list
    as "a, b, c": never a raw dict or JSON."""
    if isinstance(v, Mapping):
        return "; ".join(f"{label(k)} {value(str(k), x)}" for k, x in v.items()) or DASH
    if isinstance(v, (list, tuple)):
        return ", ".join(value(key, x) for x in v) or DASH
    return fmt_key(key, v)


def badge(passed: Any) -> Html:
    if passed is None:
        return Html(DASH)
    return Html('<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>')


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", text_cols: Sequence[int] = ()) -> str:
    """An HTML table in a box that scrolls sideways rather than running off the page; cells are escaped unless
    they are :class:`Html`; ``text_cols``: columns of prose (left-aligned, wrapped)."""
    if not rows:
        return ""
    head = "".join(f'<th class="text">{esc(h)}</th>' if i in text_cols else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="text">{esc(c)}</td>' if i in text_cols else f"<td>{esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}><tr>{head}</tr>{body}</table></div>'


def kv_table(d: Any, keys: Sequence[str] | None = None, header: str = "value") -> str:
    """Two columns, label and value, for the entries of ``d`` (all of them, or ``keys`` in that order); nested
    mappings are left to their own tables."""
    if not isinstance(d, Mapping):
        return ""
    keys = [k for k in (keys or d) if k in d and not isinstance(d[k], Mapping) and k != "history"]
    return table(["", header], [[label(k), value(k, d[k])] for k in keys])


def grid(groups: Mapping[str, Mapping], columns: Sequence[str] | None = None, first: str = "",
         cell: Callable[[str, Any], str] = value) -> str:
    """One row per group, one column per key present in any group (headers through :func:`label`)."""
    groups = {str(k): v for k, v in groups.items() if isinstance(v, Mapping)} if isinstance(groups, Mapping) else {}
    if columns is None:
        columns = []
        for g in groups.values():
            columns += [k for k in g if k not in columns]
    columns = [c for c in columns if any(c in g for g in groups.values())]
    rows = [[label(name)] + [cell(c, g.get(c)) for c in columns] for name, g in groups.items()]
    return table([first] + [label(c) for c in columns], rows)


def details(summary: str, body: str) -> str:
    """``body`` folded under a one-line ``summary`` the reader opens when wanted."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>" if body else ""


def p(text: Any, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def h3(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def duration(seconds: Any) -> str:
    """Seconds as "7 min 33 s" (under a minute: "48.3 s")."""
    if not is_num(seconds):
        return fmt(seconds)
    s = float(seconds)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:.0f} s"
