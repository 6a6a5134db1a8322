"""How close can a depth policy get to its oracle at the accuracy target? Measured on a depth track run's saved
outcome tables (``safe demo --track depth`` writes them under ``RUN/policy``), no model needed unless asked:

    python benchmarks/depth_policy_gap.py --run runs/demo-depth [--rich] [--pipeline]

Prints, on the test split's depth rows: the AUC of a probe (a 2-layer MLP fitted on the training table's depth
rows) predicting the rows the oracle skips ("skip-worthy") from each state, and the lowest use rate any threshold
on that probe reaches with accuracy at most 1 point below always-on (the threshold picked on the test rows
themselves: an upper bound for a deployed policy); the same for a score of a given AUC (binormal, 20 draws),
i.e. the AUC the 5-point use-rate target needs; and PPO's test use rate / accuracy per latency weight alpha.
``--rich``: also states with the base's answer distribution over the answer words (the cascade's VL confidence,
per word) and the per-cell image tokens, from the built-in VL base. ``--pipeline``: the deployed depth policy
(``RUN/checkpoints/policy``) through ``safe.pipeline`` on the test split, against the gate on the table's states."""
from __future__ import annotations

import argparse

import numpy as np
import torch

TOLERANCE = 0.01  # the accuracy target: at most 1 point below always-on


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    y, r = np.asarray(y, bool), rankdata(s)
    n1, n0 = y.sum(), (~y).sum()
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def probe(x: torch.Tensor, y: np.ndarray, xt: torch.Tensor, hidden: int = 64, epochs: int = 400) -> np.ndarray:
    """P(skip-worthy) on ``xt`` from an MLP fitted on (x, y) (standardised inputs, Adam, weight decay)."""
    torch.manual_seed(0)
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    target = torch.as_tensor(y, dtype=torch.float32)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net((x - mu) / sd).squeeze(1), target).backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(net((xt - mu) / sd).squeeze(1)).numpy()


def best_use(table, skip_score: np.ndarray) -> tuple[float, float]:
    """Depth on every depth row but those above a threshold of ``skip_score`` (never on VL rows): the lowest use
    rate over all thresholds with accuracy >= always-on - TOLERANCE, and that accuracy."""
    d, w, c = table.needs_audio.numpy(), table.correct_without.numpy(), table.correct_with.numpy()
    floor, use = c.mean() - TOLERANCE, d.copy()
    total = float(np.where(use, c, w).sum())
    best = (float(use.mean()), total / len(d))
    for i in np.where(d)[0][np.argsort(-skip_score[d], kind="stable")]:
        total += w[i] - c[i]
        use[i] = False
        if total / len(d) >= floor - 1e-9:
            best = (float(use.mean()), total / len(d))
    return best


def rich_parts(split: str, n: int) -> dict[str, torch.Tensor]:
    """The base's answer distribution over the answer words and its per-cell image tokens, first ``n`` rows."""
    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth import DepthSplits, depth_split
    from safe.bench.questions import SynthConfig
    from safe.bench.scenes import COLOUR_NAMES, SHAPES
    from safe.processing.prompts import load_pixels, load_vl_model

    base, tok, fmt = load_vl_model(SHIPPED_DIR / "vl")
    ids = [tok.convert_tokens_to_ids(w) for w in (*SHAPES, *COLOUR_NAMES)]
    examples, pictures, _ = depth_split(SynthConfig(), DepthSplits(), split)
    enc, pixels = fmt.encode(examples[:n]), load_pixels(pictures[:n])
    seen: dict[str, torch.Tensor] = {}
    hook = base.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.__setitem__("img", o))
    answer, cells = [], []
    with torch.no_grad():
        for s in range(0, n, 200):
            idx = list(range(s, min(s + 200, n)))
            logits = base(**fmt.prompt_batch(enc, idx), pixel_values=pixels[idx]).logits[:, -1].float()
            answer.append(torch.softmax(logits, -1)[:, ids])
            cells.append(seen["img"].reshape(len(idx), -1).float())
    hook.remove()
    return {"answer distribution": torch.cat(answer), "image cells": torch.cat(cells)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo-depth", help="a depth track run directory")
    p.add_argument("--rich", action="store_true", help="also the states with the base's answer and image cells")
    p.add_argument("--pipeline", action="store_true", help="also the deployed depth policy through safe.pipeline")
    args = p.parse_args(argv)
    from scipy.stats import norm

    from safe.bench.depth import DepthSplits, depth_split
    from safe.bench.questions import SynthConfig
    from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
    from safe.policy.table import OutcomeTable

    torch.set_num_threads(1)
    tr, te = (OutcomeTable.load(f"{args.run}/policy/depth_{s}_table.pt") for s in ("train", "test"))
    ytr, yte = ~tr.oracle_use().numpy(), ~te.oracle_use().numpy()
    dtr, dte = tr.needs_audio.numpy(), te.needs_audio.numpy()
    always, oracle = float(te.correct_with.mean()), float(te.oracle_use().float().mean())
    lucky = float((te.needs_audio & (te.correct_without == 1)).float().mean())
    print(f"test: {len(te)} rows, {dte.mean():.3f} need depth; always-on accuracy {always:.3f}; oracle use rate "
          f"{oracle:.3f}; the depth-blind base right on depth rows: {lucky:.3f} of rows; target: use <= "
          f"{oracle + 0.05:.3f} at accuracy >= {always - TOLERANCE:.3f}")

    def group(split: str, n: int) -> torch.Tensor:  # question family x number of objects, one-hot
        ex = depth_split(SynthConfig(), DepthSplits(), split)[0][:n]
        keys = sorted({(e.family, len(e.meta["objects"])) for e in ex})
        return torch.tensor([[float((e.family, len(e.meta["objects"])) == k) for k in keys] for e in ex])

    conf = (torch.stack([tr.confidence, tr.entropy], 1), torch.stack([te.confidence, te.entropy], 1))
    states = {"early state (the policy's)": (tr.states, te.states),
              "early state + base confidence, entropy": (torch.cat([tr.states, conf[0]], 1),
                                                         torch.cat([te.states, conf[1]], 1)),
              "question family x object count only": (group("train", len(tr)), group("test", len(te)))}
    if args.rich:
        rich = {s: rich_parts(s, len(t)) for s, t in (("train", tr), ("test", te))}
        for part in ("answer distribution", "image cells"):
            base_states = states["early state (the policy's)"]
            states[f"early state + {part}"] = (torch.cat([base_states[0], rich["train"][part]], 1),
                                               torch.cat([base_states[1], rich["test"][part]], 1))
    print("\nprobe of skip-worthy depth rows: test AUC; lowest use rate at the accuracy target (upper bound)")
    for name, (x, xt) in states.items():
        s = probe(x[dtr], ytr[dtr], xt)
        use, acc = best_use(te, s)
        print(f"  {name:44s} AUC {auc(yte[dte], s[dte]):.3f}   use {use:.3f} (accuracy {acc:.3f})")
    print("\na score of a given AUC on the same rows (binormal, mean of 20 draws): lowest use rate at the target")
    rng = np.random.default_rng(0)
    for a in (0.75, 0.85, 0.9, 0.95, 0.98):
        shift = np.sqrt(2) * norm.ppf(a)
        uses = [best_use(te, rng.normal(size=len(yte)) + shift * yte)[0] for _ in range(20)]
        print(f"  AUC {a:.2f}: use {np.mean(uses):.3f}")
    print("\nPPO on the training table per alpha (seed 0), test use rate / accuracy")
    for alpha in (0.0, 0.1, 0.3, 0.6):
        ev = evaluate_policy(train_ppo(tr, PPOConfig(alpha_final=alpha, seed=0))[0], te)
        print(f"  alpha {alpha:g}: {ev['use_rate']:.3f} / {ev['accuracy']:.3f}")
    if args.pipeline:
        pipeline_check(args.run, te)


def pipeline_check(run: str, table) -> None:
    """The depth policy of ``run``'s checkpoints/policy through safe.pipeline on the test split."""
    import safe
    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth import SHIPPED_DEPTH_ENCODER, DepthSplits, depth_split
    from safe.bench.questions import SynthConfig
    from safe.evaluation.scoring import answer_score

    p = safe.pipeline(run, SHIPPED_DIR, encoders={"depth": SHIPPED_DEPTH_ENCODER})
    examples, pictures, maps = depth_split(SynthConfig(), DepthSplits(), "test")
    out = []
    for s in range(0, len(examples), 64):
        out += p(image=pictures[s:s + 64], question=[e.question for e in examples[s:s + 64]],
                 depth=list(maps[s:s + 64]))
    used = torch.tensor([r["used_depth"] for r in out])
    same = int((used == p.model.policy.decide(table.states)).sum())
    acc = np.mean([answer_score(r["answer"], e) for r, e in zip(out, examples)])
    print(f"\nsafe.pipeline with {run}/checkpoints/policy on the test split: use rate {used.float().mean():.3f}, "
          f"accuracy {acc:.3f}; {same} of {len(out)} decisions as the gate's on the table's states")


if __name__ == "__main__":
    main()
