"""Two trained runs composed into one model, each modality's policy deciding its own rows in the same batches:

    python benchmarks/side_by_side.py --audio-run runs/demo --depth-run runs/depth-spec \
        --depth-spec runs/depth-spec-data/spec.yaml [--rows 240] [--batch 16] [--out FILE.json]

The audio run (``make demo``: the built-in benchmark, its deployed audio policy) gets the depth run's
``checkpoints/policy`` (``safe train --modality depth`` + ``safe policy train`` on a data spec, the depth policy
attached) through ``load_modality``. Mixed batches (half the built-in test split's rows with their clips, half the
depth spec's test rows with their maps) go through the composed ``safe.pipeline``; the same rows go through each
run's own pipeline alone, in batches of their own kind. Prints and writes (JSON): per modality, the use rate and
exact-match accuracy of the composed model and of the run alone, how many decisions and answers agree, and the
rows that used nothing (the base's answers) on both sides; then the same as the markdown table of
docs/modalities.md ("Two policies side by side")."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _answers(pipe, rows: list[dict], batch: int) -> list[dict]:
    out = []
    for s in range(0, len(rows), batch):
        part = rows[s:s + batch]
        kw = {"image": [r["image"] for r in part], "question": [r["question"] for r in part]}
        for key in ("audio", "depth"):
            if any(key in r for r in part):
                kw[key] = [r.get(key) for r in part]
        out += pipe(**kw)
    return out


def main() -> None:
    import safe
    from safe.bench.depth import load_depth_processor
    from safe.bench.depth_model import load_depth_encoder
    from safe.bench.files import BuiltinSource
    from safe.data.source import cache_dir
    from safe.data.spec import load_spec
    from safe.data.spec_source import SpecSource
    from safe.evaluation.metrics import exact_match

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio-run", default="runs/demo")
    ap.add_argument("--depth-run", default="runs/depth-spec")
    ap.add_argument("--depth-spec", default="runs/depth-spec-data/spec.yaml")
    ap.add_argument("--rows", type=int, default=240, help="rows of each kind")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    audio_rows = [{"image": e.image, "question": e.question, "audio": e.audio, "answers": e.answers,
                   "needs": e.needs_audio} for e in BuiltinSource(cache_dir() / "benchmark").split("test")[:args.rows]]
    depth_rows = []
    for e in SpecSource(load_spec(args.depth_spec)).split("test")[:args.rows]:
        m = (e.meta.get("modalities") or {}).get("depth")
        depth_rows.append({"image": e.image, "question": e.question, "answers": e.answers, "needs": m is not None,
                           **({"depth": m} if m else {})})
    mixed = [r for pair in zip(audio_rows, depth_rows) for r in pair]  # every batch holds both kinds

    composed = safe.pipeline(args.audio_run)
    composed.model.load_modality("depth", Path(args.depth_run) / "checkpoints" / "policy", load_depth_encoder())
    composed.processor.modalities["depth"] = load_depth_processor()
    assert composed.model.policy is not None and composed.model.policy_of("depth") is not None
    together = _answers(composed, mixed, args.batch)
    alone = {"audio": _answers(safe.pipeline(args.audio_run), audio_rows, args.batch),
             "depth": _answers(safe.pipeline(args.depth_run), depth_rows, args.batch)}
    report = {}
    for k, (name, rows) in enumerate((("audio", audio_rows), ("depth", depth_rows))):
        mine, solo = together[k::2], alone[name]
        used = f"used_{name}"
        acc = lambda outs: sum(exact_match(o["answer"], r["answers"]) for o, r in zip(outs, rows)) / len(rows)  # noqa: E731
        report[name] = {
            "rows": len(rows), "rows_needing_it": sum(r["needs"] for r in rows),
            "use_rate": {"composed": sum(o[used] for o in mine) / len(rows), "alone": sum(o[used] for o in solo) / len(rows)},
            "accuracy": {"composed": acc(mine), "alone": acc(solo)},
            "decisions_equal": sum(a[used] == b[used] for a, b in zip(mine, solo)),
            "answers_equal": sum(a["answer"] == b["answer"] for a, b in zip(mine, solo)),
            "rows_using_nothing_equal": sum(a["answer"] == b["answer"] for a, b in zip(mine, solo)
                                            if not a["modalities"] and not b["modalities"]),
            "rows_using_nothing": sum(1 for a, b in zip(mine, solo) if not a["modalities"] and not b["modalities"]),
            "other_modality_used": sum(bool(set(o["modalities"]) - {name}) for o in mine)}
    for name, r in report.items():
        print(f"{name}: {r['rows']} rows ({r['rows_needing_it']} need it); use rate composed {r['use_rate']['composed']:.3f} "
              f"/ alone {r['use_rate']['alone']:.3f}; accuracy {r['accuracy']['composed']:.3f} / "
              f"{r['accuracy']['alone']:.3f}; decisions equal {r['decisions_equal']}/{r['rows']}, answers equal "
              f"{r['answers_equal']}/{r['rows']} (rows using nothing: {r['rows_using_nothing_equal']}/"
              f"{r['rows_using_nothing']}); rows that used the other modality {r['other_modality_used']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The report as the table docs/modalities.md shows."""
    lines = ["| modality | rows (needing it) | use rate, composed / alone | accuracy, composed / alone | decisions equal "
             "| answers equal | rows that used the other modality |", "|---|---|---|---|---|---|---|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['rows']} ({r['rows_needing_it']}) | {r['use_rate']['composed']:.3f} / "
                     f"{r['use_rate']['alone']:.3f} | {r['accuracy']['composed']:.3f} / {r['accuracy']['alone']:.3f} | "
                     f"{r['decisions_equal']} of {r['rows']} | {r['answers_equal']} of {r['rows']} | "
                     f"{r['other_modality_used']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
