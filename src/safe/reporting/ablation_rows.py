"""Ablation tables of docs/results.md from ``metrics.json``: the Stage A grid (``safe ablate``), the policy-state
ablation (``safe policy ablate-state``) and the Stage B / C variants (``safe eval``); :mod:`safe.reporting.docs`
lists them on the page. Each returns "" when the run lacks its numbers."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe.reporting.format import DASH, fmt
from safe.reporting.format import at as _at
from safe.reporting.format import md_table as _table


def _f(value: Any, digits: int = 3) -> str:
    return fmt(value, digits)


def stage_a_grid(m: Mapping) -> str:
    """The Stage A grid's table, then the encoder comparison's (its rows carry ``encoders``) when it ran."""
    g = _at(m, "ablations")
    every = [r for r in g.get("rows") or () if isinstance(r, Mapping)]
    rows = [r for r in every if "encoders" not in r]
    compared = encoder_comparison(g, [r for r in every if "encoders" in r])
    if not rows:
        return compared
    cols = (("audio_accuracy", "audio acc"), ("vl_accuracy_gate_open", "VL acc, gate open"),
            ("vl_answers_changed_gate_open", "VL answers changed"), ("caption_cider_d", "caption CIDEr-D"))

    def cell(r: Mapping, key: str) -> str:
        ci = r.get(f"{key}_ci")
        return fmt(r.get(key)) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")

    def changes(c: Any) -> str:  # safe ablate records a string ("the recipe", "lambda_retention=0, ...")
        if isinstance(c, Mapping):
            return ", ".join(f"{k}={v}" for k, v in c.items()) or "the recipe"
        return str(c) if c else "the recipe"

    seeds = sorted({r.get("seeds", g.get("seeds")) for r in rows}, key=str)
    head = (f"Stage A grid (`safe ablate`): {fmt(g.get('steps'))} steps per entry, "
            + (f"{fmt(seeds[0])} seed(s)" if len(seeds) == 1 else "seeds per entry as the seeds column says")
            + f", scored on the {fmt(g.get('split'))} split; mean [95% CI over seeds] where there are several. "
            "The reference entry's interval is Stage A's own spread over seeds: an entry whose mean lies inside it "
            "is not told apart from the recipe.\n\n")
    return head + _table(["entry", "changes", "seeds", *(h for _, h in cols), "trainable", "train s"],
                         [[r.get("name", DASH), changes(r.get("changes")), fmt(r.get("seeds", g.get("seeds"))),
                           *(cell(r, k) for k, _ in cols),
                           _count(r.get("trainable_parameters")), fmt(r.get("train_seconds"), 1)] for r in rows]) \
        + (f"\n{compared}" if compared else "")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else DASH


def encoder_comparison(g: Mapping, rows: list[Mapping]) -> str:
    """The encoder comparison of ``safe ablate --encoder-b`` (A alone, B alone, A + B as an ensemble): which
    frozen encoders each row used, what it scored and what it cost. "" without such rows."""
    if not rows:
        return ""
    named = " ".join(str(r.get("encoders", "")) for r in rows).lower()
    clap = ("" if "clap" in named else " No CLAP model is among them (no pretrained CLAP installs offline here), so "
            "this is not a CLAP vs Whisper comparison.")
    steps = sorted({r.get("steps", g.get("steps")) for r in rows}, key=str)
    seeds = sorted({r.get("seeds", g.get("seeds")) for r in rows}, key=str)
    split = rows[0].get("split", g.get("split"))
    where = f", measured in its own run, `{rows[0]['run']}`" if rows[0].get("run") else ""
    size = (f" ({fmt(rows[0].get('train_rows', g.get('train_rows')))} training rows, "
            f"{fmt(rows[0].get('eval_rows', g.get('eval_rows')))} scored)"
            if rows[0].get("eval_rows", g.get("eval_rows")) is not None else "")
    head = (f"Encoder comparison (`safe ablate --encoder-b`): the recipe unchanged, only the frozen audio encoder(s) "
            f"differ; {' / '.join(fmt(s) for s in steps)} steps per entry, {' / '.join(fmt(s) for s in seeds)} "
            f"seed(s), scored on the {fmt(split)} split{size}{where}. The encoders are exactly those the second column "
            f"names.{clap} VL retention "
            "is VL accuracy with the gate open over the base's; encoder ms is the frozen encoder's features and "
            "forward per clip (one batch of 16 training clips, best of 3; an ensemble's is its members' sum). Seconds are "
            "wall-clock on the machine as it was loaded then; the first entry trained in a call also decodes the "
            "images the later ones reuse.\n\n")
    return head + _table(["entry", "frozen encoder(s)", "audio acc", "VL acc, gate open", "VL retention",
                          "VL answers changed", "trainable", "encoder params", "encoder ms / clip", "train s"],
                         [[r.get("name", DASH), str(r.get("encoders", DASH)), ci_cell(r, "audio_accuracy"),
                           ci_cell(r, "vl_accuracy_gate_open"), fmt(r.get("vl_retention_ratio_gate_open"), 4),
                           fmt(r.get("vl_answers_changed_gate_open")), _count(r.get("trainable_parameters")),
                           _count(r.get("encoder_parameters")), fmt(r.get("encoder_ms_per_clip"), 2),
                           fmt(r.get("train_seconds"), 1)] for r in rows])

def ci_cell(r: Mapping, key: str, digits: int = 3) -> str:
    """``mean [low, high]`` of a row's metric over seeds (the mean alone for one seed)."""
    ci = r.get(f"{key}_ci")
    return fmt(r.get(key), digits) + (f" [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
                                      if isinstance(ci, list) and len(ci) == 2 else "")

def state_ablation(m: Mapping) -> str:
    g = _at(m, "policy_state_ablation")
    rows = [r for r in g.get("rows") or () if isinstance(r, Mapping)]
    if not rows:
        return ""
    verdict = (f"The default state (`{g.get('default')}`) is the best measured." if g.get("default_is_best") else
               f"Best measured: `{g.get('best')}`; the default state is `{g.get('default')}`.")
    head = (f"`safe policy ablate-state`: PPO on each part subset of the state, {fmt(g.get('seeds'))} seeds x "
            f"{fmt(g.get('ppo_steps'))} updates per entry at alpha {fmt(g.get('alpha'), 2)}, scored on the "
            f"{fmt(g.get('split'))} split; mean [95% CI over seeds]. ms / query is priced from measured costs "
            f"(batch {fmt(g.get('cost_batch'))}, one thread): with the confidence the cascade, without it the "
            "early path, plus the entry's preview (preview ms: statistics or the encoder-first-layer embedding, "
            f"{fmt(g.get('preview_embedding_ms'), 3)} ms per clip). Best: highest accuracy (3 decimals), then "
            f"lowest ms / query. {verdict}\n\n")
    return head + _table(["state", "dim", "accuracy", "use rate", "ms / query", "preview ms", "collapsed seeds"],
                         [[r.get("name", DASH), fmt(r.get("state_dim")), ci_cell(r, "accuracy"),
                           ci_cell(r, "use_rate"), ci_cell(r, "mean_latency_ms"), fmt(r.get("state_ms"), 3),
                           fmt(r.get("collapsed"))] for r in rows])

def stage_b_ablations(m: Mapping) -> str:
    rows = [r for r in _at(m, "eval", "ablations").get("rows") or () if isinstance(r, Mapping)]
    return _table(["Stage B / C variant", "accuracy", "VL acc", "audio acc", "use rate"],
                  [[r.get("name", DASH), *(_f(r.get(k)) for k in ("accuracy", "vl_accuracy", "audio_accuracy",
                                                                   "use_rate"))] for r in rows])
