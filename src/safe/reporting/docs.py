"""Markdown results generated from a run's ``metrics.json``: the README's short table and ``docs/results.md``.

Every number in the project's documentation comes from here, so the prose cannot drift from the run:
:func:`readme_table` is the short table between the README's ``<!-- results:start -->`` and
``<!-- results:end -->`` markers, :func:`results_page` the long results (everything ``make demo`` measures,
Stages B/C, the evaluation, the ablations when the run has them), and :func:`write_docs` writes both.
A figure whose numbers the run does not hold is left out (a row) or shows "—" (a cell); nothing is invented.
Only plain data is read (no torch), as the report does.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.reporting.benchmark_tables import BENCH_SECTIONS, render
from safe.reporting.format import DASH, fmt, fmt_ci
from safe.reporting.modalities import modality_table
from safe.reporting.stage_b_rows import floor_stress, row_costs

START, END = "<!-- results:start -->", "<!-- results:end -->"
RESULTS_FILE = "results.md"
DEFAULT_COMMAND = "make demo"


class DocsError(ValueError):
    """A documentation file cannot take the generated results (e.g. the README lacks its markers)."""


# ---------------------------------------------------------------------------------------- values
def _at(metrics: Any, *keys: str) -> Any:
    """``metrics[k1][k2]...``; raises KeyError when a level is missing or not a mapping (the row is left out)."""
    for key in keys:
        if not isinstance(metrics, Mapping) or key not in metrics:
            raise KeyError(key)
        metrics = metrics[key]
    return metrics


def _f(value: Any, digits: int = 3) -> str:
    return fmt(value, digits)


def _pts(value: Any) -> str:
    """A fraction as percentage points with one decimal ("0.5")."""
    return fmt(100 * value, 1) if isinstance(value, (int, float)) and not isinstance(value, bool) else DASH


def _yes(value: Any) -> str:
    return DASH if value is None else ("yes" if value else "NO")


def _cell(text: Any) -> str:
    """Text for a markdown cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [list(r) for r in rows]
    if not rows:
        return ""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


Row = tuple[str, Callable[[Mapping], str]]


def _rows(metrics: Mapping, specs: Sequence[Row]) -> list[list[str]]:
    """``[label, value]`` for each spec whose numbers the metrics hold; a spec that finds a key missing or a
    value of the wrong kind is left out (an older or partial run), never shown as a made-up number."""
    out = []
    for label, value in specs:
        try:
            out.append([label, value(metrics)])
        except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
            continue
    return out


def _policy(m: Mapping) -> Mapping:
    return _at(m, "policy")


def _deployed(m: Mapping) -> Mapping:
    """The deployed gate's end-to-end result; runs before the key was named ``deployed`` hold it under ``cascade``."""
    p = _policy(m)
    return p["deployed"] if "deployed" in p else _at(p, "cascade")


def _state(m: Mapping) -> str:
    cfg = _policy(m).get("config")
    return cfg.get("state", "cascade") if isinstance(cfg, Mapping) else "cascade"  # runs before --state: cascade


def _batches(m: Mapping) -> Mapping[str, Mapping]:
    b = _at(m, "policy", "latency_by_batch")
    if not isinstance(b, Mapping) or not b:
        raise KeyError("latency_by_batch")
    return b


def _seed_ci(d: Mapping) -> str:
    """Policy seeds are recorded as {values, mean, low, high}; the eval's as {mean, ci_low, ci_high}."""
    low, high = d.get("ci_low", d.get("low")), d.get("ci_high", d.get("high"))
    return f"{_f(d['mean'])} [{_f(low)}, {_f(high)}]"


def _command(metrics: Mapping, command: str | None) -> str:
    return command or (metrics.get("command") if isinstance(metrics.get("command"), str) else None) \
        or DEFAULT_COMMAND


# ---------------------------------------------------------------------------------- README table
def _vl_row(m: Mapping) -> str:
    a = _at(m, "stage_a")
    text = f"{_f(a['vl_accuracy_gate_closed'])} / {_f(a['vl_accuracy_gate_open'])} / {_f(a['vl_accuracy_base'])}"
    if "vl_answers_changed_gate_open" in a:
        text += f" ({fmt(a['vl_answers_changed_gate_open'])} of {fmt(a.get('vl_examples'))} answers changed, gate open)"
    return text


def _latency_row(m: Mapping) -> str:
    b = _batches(m)
    return " / ".join(_f(r["policy_to_always"], 2) for r in b.values()) + f" (batch {' / '.join(b)})"


_README: list[Row] = [
    ("VL accuracy: gate closed / gate open / base", _vl_row),
    ("Audio-question accuracy: SAFE / base",
     lambda m: f"{_f(_at(m, 'stage_a', 'audio_accuracy'))} / {_f(_at(m, 'stage_a', 'audio_accuracy_base'))}"),
    ("Policy accuracy / always-audio",
     lambda m: (f"{_f(_at(m, 'policy', 'test', 'accuracy'))} / {_f(_at(m, 'policy', 'baselines', 'always', 'accuracy'))}"
                f" ({_pts(_at(m, 'policy', 'baselines', 'always', 'accuracy') - _at(m, 'policy', 'test', 'accuracy'))}"
                " points under)")),
    ("Audio-use rate: policy / oracle",
     lambda m: (f"{_f(_at(m, 'policy', 'test', 'use_rate'))} / {_f(_at(m, 'policy', 'test', 'oracle_use_rate'))}"
                f" ({_pts(_at(m, 'policy', 'test', 'use_rate') - _at(m, 'policy', 'test', 'oracle_use_rate'))}"
                " points above)")),
    ("Latency, policy / always-audio (deployed gate, end to end)", _latency_row),
    ("Frozen base and encoder byte-identical after training",
     lambda m: _yes(_at(m, "stage_a", "frozen_byte_identical"))),
]


def readme_table(metrics: Mapping[str, Any]) -> str:
    """The README's short results table (about six rows) from a demo run's ``metrics.json``, followed by a
    line naming where the long results are. Rows whose numbers the run lacks are left out."""
    rows = _rows(metrics, _README)
    if not rows:
        return "No results in this run's metrics.json yet: run `make demo`, then `safe report --docs`.\n"
    return (_table(["", "value"], rows) + "\n"
            "Test split of the built-in benchmark; generated from the run's `metrics.json` by `safe report --docs`. "
            "All figures, how they were measured, and the ablations: [docs/results.md](docs/results.md).\n")


# ---------------------------------------------------------------------------------- results page
def _per_family(d: Mapping) -> str:
    return ", ".join(f"{k} {_f(v)}" for k, v in d.items() if k != "all")


def _deaf(m: Mapping) -> str:
    checks = _at(m, "base", "deaf_check")
    bad = [f for f, c in checks.items() if not c["passed"]]
    return "passes" if not bad else f"FAILS ({', '.join(bad)})"


def _verify(m: Mapping) -> str:
    v = _at(m, "verify")
    models = v.get("models") if isinstance(v.get("models"), Mapping) else {}
    ok = v.get("passed", all(isinstance(x, Mapping) and x.get("passed") for x in models.values()))
    if not models:
        return "PASS" if ok else "FAIL"
    checks = sum(len(x["checks"]) for x in models.values() if isinstance(x, Mapping) and
                 isinstance(x.get("checks"), (list, Mapping)))
    pairs = f"{len(models)} model pair{'s' if len(models) != 1 else ''}"
    return f"{'all PASS' if ok else 'FAIL'} ({pairs}, {checks} checks)"


def _captions(m: Mapping) -> str:
    a = _at(m, "stage_a")
    return (f"{_f(a['caption_exact_match'])} / {_f(a['caption_cider_d'], 2)} / {_f(a['caption_bleu2'])} "
            f"(base CIDEr-D {_f(a['caption_cider_d_base'], 2)}, BLEU-2 {_f(a['caption_bleu2_base'])})")


def _gap(m: Mapping) -> str:
    g = _at(m, "policy", "oracle_gap")
    return (f"+{fmt(g['base_as_good_points'], 1)} ({g['base_as_good']} rows) / +{fmt(g['audio_no_help_points'], 1)} "
            f"({g['audio_no_help']}) / +{fmt(g['vl_points'], 1)} ({g['vl']}) / -{fmt(g['missed_points'], 1)} "
            f"({g['missed']}); total {fmt(g['gap_points'], 1)} points")


def _pareto(m: Mapping) -> str:
    ppo = [p for p in _at(m, "policy", "pareto") if p.get("kind") == "ppo"]
    if not ppo:
        raise KeyError("ppo")
    above = sum(bool(p.get("beats_thresholds")) for p in ppo)
    return f"{'yes' if above == len(ppo) else 'no'} ({above} of {len(ppo)})"


def _seeds(m: Mapping) -> str:
    s = _at(m, "policy", "seeds")
    return f"{_seed_ci(s['accuracy'])} / {_seed_ci(s['use_rate'])} ({len(s['accuracy']['values'])} seeds)"


def _stage_c(m: Mapping) -> str:
    d, dist = _at(m, "policy", "distill"), _at(m, "policy", "baselines", "distilled")
    return (f"{d['student_params']:,} parameters; agreement {_f(d['test_agreement'])}; accuracy "
            f"{_f(dist['accuracy'])}; use rate {_f(dist['use_rate'])}")


def _skip_all(m: Mapping) -> str:
    s = _at(m, "policy", "skip_all")
    return f"{s['encoder_rows']} encoder rows of {s['rows']}; x{_f(s['ratio_to_base'], 2)} the base's time"


def _flops(m: Mapping) -> str:
    e = _at(m, "eval", "efficiency")
    f = e["flops_per_query"]
    return (f"{fmt(f['base'] / 1e6, 1)} M / {fmt(f['always_audio'] / 1e6, 1)} M / {fmt(f['policy'] / 1e6, 1)} M "
            f"({e['flops_rows_using_audio']} of the {e['flops_rows']} counted rows used audio)")


def _snr(m: Mapping) -> str:
    sweep = _at(m, "eval", "robustness", "snr_sweep")
    head = " / ".join("clean" if r["snr_db"] is None else f"{r['snr_db']:g}" for r in sweep)
    white = f"white noise {' / '.join(_f(r['audio_accuracy']) for r in sweep)}"
    if all("background_audio_accuracy" in r for r in sweep):  # runs from before the background sweep lack it
        white += f"; other clips as background {' / '.join(_f(r['background_audio_accuracy']) for r in sweep)}"
    return f"{white} ({head} dB)"


def _gates(m: Mapping) -> str:
    gates = [g for g in _at(m, "eval", "stage_gates") if isinstance(g, Mapping)]
    if not gates:
        raise KeyError("stage_gates")
    return f"{sum(g.get('passed') is True for g in gates)} of {len(gates)} PASS"


def _audio_ci(m: Mapping) -> str:
    a = _at(m, "eval", "audio_gains", "audio_accuracy")
    return " / ".join(fmt_ci(a[k]) for k in ("base", "safe", "policy") if k in a) + \
        f" ({' / '.join(k for k in ('base', 'safe', 'policy') if k in a)})"


def _batch_rows(m: Mapping) -> list[Row]:
    try:
        batches = _batches(m)
    except KeyError:
        return []
    return [(f"Deployed gate, batch {b}: mean ms per query, base / always-audio / policy (policy / always)",
             lambda m, r=r: (f"{_f(r['base_mean_ms'], 2)} / {_f(r['always_audio_mean_ms'], 2)} / "
                             f"{_f(r['policy_mean_ms'], 2)} ({_f(r['policy_to_always'], 2)})"))
            for b, r in batches.items()]


def _measures(m: Mapping) -> list[Row]:
    t = lambda *k: _at(m, "policy", "test", *k)  # noqa: E731
    return [
        ("Built-in VL model, VL-only exact match", lambda m: f"{_f(_at(m, 'base', 'vl_accuracy'))} "
         f"({_per_family(_at(m, 'base', 'test_accuracy'))})"),
        ("Built-in VL model on audio questions (deaf-guesser check)", _deaf),
        ("Built-in audio encoder, exact tag sets on held-out clips",
         lambda m: _f(_at(m, "base", "audio_encoder", "tag_exact_match"))),
        ("Stage 1 verification", _verify),
        ("Stage A: VL accuracy, gate closed / base",
         lambda m: f"{_f(_at(m, 'stage_a', 'vl_accuracy_gate_closed'))} / {_f(_at(m, 'stage_a', 'vl_accuracy_base'))} "
         f"(answers {_pts(_at(m, 'stage_a', 'answers_identical_gate_closed'))}% identical)"),
        ("Stage A: VL accuracy, gate open (unrelated audio attached) / base",
         lambda m: f"{_f(_at(m, 'stage_a', 'vl_accuracy_gate_open'))} / {_f(_at(m, 'stage_a', 'vl_accuracy_base'))} "
         f"({fmt(_at(m, 'stage_a', 'vl_answers_changed_gate_open'))} of {fmt(_at(m, 'stage_a', 'vl_examples'))} "
         "answers changed)"),
        ("Stage A: audio-dependent QA accuracy / base",
         lambda m: f"{_f(_at(m, 'stage_a', 'audio_accuracy'))} / {_f(_at(m, 'stage_a', 'audio_accuracy_base'))}"),
        ("Stage A: audio captions exact match / CIDEr-D / BLEU-2", _captions),
        ("Stage A: base + encoder SHA-256 before = after", lambda m: _yes(_at(m, "stage_a", "frozen_byte_identical"))),
        ("Stage B: PPO policy accuracy / always-audio / oracle",
         lambda m: f"{_f(t('accuracy'))} / {_f(_at(m, 'policy', 'baselines', 'always', 'accuracy'))} / "
         f"{_f(t('oracle_accuracy'))} (alpha {fmt(_at(m, 'policy', 'alpha'), 2)}, {_state(m)} state)"),
        ("Stage B: audio-use rate, policy / oracle", lambda m: f"{_f(t('use_rate'))} / {_f(t('oracle_use_rate'))} "
         f"({_pts(t('use_rate') - t('oracle_use_rate'))} points above the oracle)"),
        ("Stage B: use above the oracle by kind of row: base already as good / audio does not help / VL / "
         "audio-helped rows skipped", _gap),
        ("Stage B: VL accuracy with the policy / base; VL rows that consulted audio",
         lambda m: f"{_f(t('vl_accuracy'))} / {_f(t('base_vl_accuracy'))}; rate {_f(t('false_positive_rate'))}"),
        ("Stage B: confidence / entropy threshold at the same use rate (accuracy)",
         lambda m: f"{_f(_at(m, 'policy', 'baselines', 'confidence', 'accuracy'))} / "
         f"{_f(_at(m, 'policy', 'baselines', 'entropy', 'accuracy'))}"),
        ("Stage B: PPO at every alpha strictly above every no-slower threshold point", _pareto),
        ("Stage B: PPO seeds, accuracy / use rate, mean [95% CI]", _seeds),
        ("Stage B: audio's extra cost per row (test): runtime ms, mean [5th, 95th percentile] / LM tokens, mean",
         row_costs),
        ("Stage B: retention floor under stress (audio breaks a share of VL rows, state blanked, audio free): "
         "VL accuracy with dual ascent / lambda = 0 / floor; lambda max / final", floor_stress),
        ("Stage C: MLP gate, agreement with PPO on test / accuracy / use rate", _stage_c),
        ("Deployed gate measured end to end: accuracy / use rate",
         lambda m: f"{_f(_deployed(m)['accuracy'])} / {_f(_deployed(m)['use_rate'])} "
         f"({fmt(_deployed(m).get('encoder_rows'))} encoder rows for {fmt(_deployed(m).get('rows_using_audio'))} "
         "rows using audio)"),
        *_batch_rows(m),
        ("A batch of VL questions the policy skips: encoder rows, cost vs base", _skip_all),
        ("Eval: FLOPs per query, audio encoder included: base / always-audio / policy", _flops),
        ("Eval: audio accuracy [95% CI]", _audio_ci),
        ("Eval: SNR sweep, audio accuracy", _snr),
        ("Eval: misaligned clips / held-out sound kinds (audio accuracy)",
         lambda m: f"{_f(_at(m, 'eval', 'robustness', 'misaligned', 'audio_accuracy'))} / "
         f"{_f(_at(m, 'eval', 'robustness', 'ood_sounds', 'audio_accuracy'))}"),
        ("Eval: irrelevance stress, VL questions with random other rows' clips: policy false positives / VL "
         "answers changed with the gate forced open",
         lambda m: f"{_f(_at(m, 'eval', 'robustness', 'irrelevant', 'false_positive_rate'))} / "
         f"{fmt(_at(m, 'eval', 'robustness', 'irrelevant', 'answers_changed'))} of "
         f"{fmt(_at(m, 'eval', 'robustness', 'irrelevant', 'n'))}"),
        ("Eval: the proposal's targets (stage gates, docs/design.md)", _gates),
    ]


def _stage_a_families(m: Mapping) -> str:
    fam = _at(m, "stage_a", "per_family")
    rows = [[f, _f(v.get("base")), _f(v.get("open"))] for f, v in fam.items() if isinstance(v, Mapping)]
    return _table(["family", "base", "SAFE, gate open"], rows)


def _timing(m: Mapping) -> str:
    t = m.get("timing")
    if not isinstance(t, Mapping):
        return ""
    rows = [[k.replace("_", " "), fmt(v, 1)] for k, v in t.items() if isinstance(v, (int, float))]
    return _table(["", "seconds"], rows)


_POLICY_COLS = (("accuracy", "accuracy"), ("vl_accuracy", "VL acc"), ("audio_accuracy", "audio acc"),
                ("use_rate", "use rate"), ("mean_latency_ms", "ms / query"), ("false_positive_rate", "VL FP"))


def _policy_table(m: Mapping) -> str:
    p = _policy(m)
    rows = {f"PPO policy (alpha {fmt(p.get('alpha'), 2)})": p.get("test")}
    rows.update(p.get("baselines") or {})
    return _table(["gate", *(h for _, h in _POLICY_COLS)],
                  [[name, *(_f(r.get(k), 2 if k.endswith("_ms") else 3) for k, _ in _POLICY_COLS)]
                   for name, r in rows.items() if isinstance(r, Mapping)])


def _pareto_table(m: Mapping) -> str:
    pts = [q for q in _policy(m).get("pareto") or () if isinstance(q, Mapping) and q.get("kind") == "ppo"]
    return _table(["PPO point", "accuracy", "ms / query", "use rate", "above every no-slower threshold point"],
                  [[q.get("name", DASH), _f(q.get("accuracy")), _f(q.get("mean_latency_ms"), 3), _f(q.get("use_rate")),
                    _yes(q.get("beats_thresholds"))] for q in pts])


def _latency_table(m: Mapping) -> str:
    try:
        batches = _batches(m)
    except KeyError:
        return ""
    cols = [(k, name) for k, name in (("base", "base"), ("always_audio", "always-audio"), ("policy", "policy"))]
    return _table(["batch", "rows", *(f"{n} mean (median / p95)" for _, n in cols), "policy / always", "policy / base"],
                  [[b, fmt(r.get("rows")), *(f"{_f(r.get(k + '_mean_ms'))} ({_f(r.get(k + '_median_ms'))} / "
                                            f"{_f(r.get(k + '_p95_ms'))})" for k, _ in cols),
                    _f(r.get("policy_to_always")), _f(r.get("policy_to_base"))] for b, r in batches.items()])


def _retention_table(m: Mapping) -> str:
    r = _at(m, "eval", "retention")
    acc, mc, changed = r.get("vl_accuracy") or {}, r.get("mcnemar") or {}, r.get("answers_changed") or {}
    return _table(["mode", "VL accuracy", "answers changed", "McNemar p"],
                  [[k.replace("_", " "), _f(acc.get(k)),
                    f"{fmt(changed[k])} of {fmt(changed.get('n'))}" if k in changed else DASH,
                    _f((mc.get(k) or {}).get("pvalue"))] for k in ("base", "gate_closed", "gate_open", "policy")
                   if k in acc])


def _gates_table(m: Mapping) -> str:
    gates = [g for g in _at(m, "eval", "stage_gates") if isinstance(g, Mapping)]
    return _table(["gate", "target", "measured", "result"],
                  [[g.get("gate", DASH), g.get("target", DASH), fmt(g.get("measured")),
                    "PASS" if g.get("passed") is True else "FAIL"] for g in gates])


def _stage_a_grid(m: Mapping) -> str:
    g = _at(m, "ablations")
    rows = [r for r in g.get("rows") or () if isinstance(r, Mapping)]
    if not rows:
        return ""
    cols = (("audio_accuracy", "audio acc"), ("vl_accuracy_gate_open", "VL acc, gate open"),
            ("vl_answers_changed_gate_open", "VL answers changed"), ("caption_cider_d", "caption CIDEr-D"))

    def cell(r: Mapping, key: str) -> str:
        ci = r.get(f"{key}_ci")
        return fmt(r.get(key)) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")

    def changes(c: Any) -> str:  # safe ablate records a string ("the recipe", "lambda_retention=0, ...")
        if isinstance(c, Mapping):
            return ", ".join(f"{k}={v}" for k, v in c.items()) or "the recipe"
        return str(c) if c else "the recipe"

    head = (f"Stage A grid (`safe ablate`): {fmt(g.get('steps'))} steps per entry, {fmt(g.get('seeds'))} seed(s), "
            f"scored on the {fmt(g.get('split'))} split; mean [95% CI over seeds] where there are several.\n\n")
    return head + _table(["entry", "changes", *(h for _, h in cols), "trainable", "train s"],
                         [[r.get("name", DASH), changes(r.get("changes")), *(cell(r, k) for k, _ in cols),
                           f"{r['trainable_parameters']:,}" if isinstance(r.get("trainable_parameters"), int)
                           else DASH, fmt(r.get("train_seconds"), 1)] for r in rows])


def _ci_cell(r: Mapping, key: str, digits: int = 3) -> str:
    """``mean [low, high]`` of a row's metric over seeds (the mean alone for one seed)."""
    ci = r.get(f"{key}_ci")
    return fmt(r.get(key), digits) + (f" [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
                                      if isinstance(ci, list) and len(ci) == 2 else "")


def _state_ablation(m: Mapping) -> str:
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
                         [[r.get("name", DASH), fmt(r.get("state_dim")), _ci_cell(r, "accuracy"),
                           _ci_cell(r, "use_rate"), _ci_cell(r, "mean_latency_ms"), fmt(r.get("state_ms"), 3),
                           fmt(r.get("collapsed"))] for r in rows])


def _stage_b_ablations(m: Mapping) -> str:
    rows = [r for r in _at(m, "eval", "ablations").get("rows") or () if isinstance(r, Mapping)]
    return _table(["Stage B / C variant", "accuracy", "VL acc", "audio acc", "use rate"],
                  [[r.get("name", DASH), *(_f(r.get(k)) for k in ("accuracy", "vl_accuracy", "audio_accuracy",
                                                                   "use_rate"))] for r in rows])


def _section(title: str, render: Callable[[Mapping], str], m: Mapping, intro: str = "") -> str:
    try:
        body = render(m)
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
        body = ""
    return f"## {title}\n\n{intro}{body}\n" if body else ""


def results_page(metrics: Mapping[str, Any], *, command: str | None = None) -> str:
    """The long results as markdown (``docs/results.md``), every table generated from ``metrics``.

    ``command`` names what produced the run (default: ``metrics["command"]`` when recorded, else
    ``make demo``). Sections whose numbers the run lacks are left out; the ablation tables appear when
    the run has them (``safe ablate`` for the Stage A grid, ``safe eval`` for the Stage B/C variants).
    """
    m = metrics
    parts = ["# Results\n\n",
             f"Generated by `safe report --docs` from the `metrics.json` of a run produced by `{_command(m, command)}`; "
             "do not edit by hand (regenerate instead). All figures are on the test split of the built-in "
             "benchmark unless a row says otherwise; \"—\" marks a number the run did not record.\n\n"]
    measures = _rows(m, _measures(m))
    if measures:
        parts.append(f"## What `{_command(m, command)}` measures\n\n" + _table(["", "value"], measures) + "\n")
    parts += [
        _section("Per family after Stage A", _stage_a_families, m, "Accuracy per question family, base -> SAFE "
                 "with the gate open (each row with its own clip).\n\n"),
        _section("Per modality", modality_table, m),
        _section("Stages B and C: policy vs baselines", _policy_table, m, "Priced from the outcome table (measured "
                 "costs per query); random / confidence / entropy at the policy's use rate.\n\n"),
        _section("Pareto points of the PPO policy", _pareto_table, m),
        _section("Deployed gate, measured end to end", _latency_table, m, f"Mean milliseconds per query by batch size "
                 f"({_safe_state(m)} state).\n\n"),
        _section("Evaluation: retention", _retention_table, m),
        *(_section(f"Evaluation: {title}", lambda m, f=f, k=k: render(f(_at(m, "eval", k)), _table,
                                                                     lambda n: f"\n{n}\n"), m)
          for title, f, k in BENCH_SECTIONS),
        _section("Evaluation: stage gates", _gates_table, m),
        _section("Ablations: Stage A", _stage_a_grid, m),
        _section("Ablations: Stages B and C", _stage_b_ablations, m),
        _section("Ablations: the policy's state", _state_ablation, m),
        _section("Time per stage", _timing, m),
    ]
    return "".join(parts).rstrip("\n") + "\n"


def _safe_state(m: Mapping) -> str:
    try:
        return _state(m)
    except KeyError:
        return DASH


# ---------------------------------------------------------------------------------------- writing
def replace_block(text: str, block: str, name: str = "README") -> str:
    """``text`` with everything between :data:`START` and :data:`END` replaced by ``block`` (markers kept).
    Raises :class:`DocsError` naming ``name`` when a marker is missing, repeated or out of order."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise DocsError(f"{name} must hold one {START} line followed by one {END} line around the generated "
                        f"results table (found {text.count(START)} start and {text.count(END)} end markers)")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def write_docs(metrics: Mapping[str, Any], docs_dir: str | os.PathLike, readme: str | os.PathLike | None = None,
               *, command: str | None = None) -> list[Path]:
    """Write ``docs_dir/results.md`` (:func:`results_page`) and, when ``readme`` is given, replace its block
    between :data:`START` and :data:`END` with :func:`readme_table`. Returns the paths written.

    The README is checked before anything is written: missing markers raise :class:`DocsError` naming the
    file and leave both files as they were. Writes are atomic (temporary file, then rename).
    """
    new_readme = None
    if readme is not None:
        readme = Path(readme)
        if not readme.is_file():
            raise DocsError(f"{readme}: no such README file")
        new_readme = replace_block(readme.read_text(encoding="utf-8"), readme_table(metrics), str(readme))
    results = Path(docs_dir) / RESULTS_FILE
    write_atomic(results, results_page(metrics, command=command))
    written = [results]
    if new_readme is not None:
        write_atomic(readme, new_readme)
        written.append(readme)
    return written
