"""The Stage A grid's table in docs/results.md says how many seeds each entry has: the reference entry runs more
seeds than the others (its interval is Stage A's own spread), and a reader must see which row rests on what."""
from safe.reporting.ablation_rows import stage_a_grid


def _row(name: str, seeds: int, acc: float, ci=None) -> dict:
    return {"name": name, "changes": "the recipe" if name == "reference" else "k=4", "seeds": seeds,
            "audio_accuracy": acc, **({"audio_accuracy_ci": ci} if ci else {}), "vl_accuracy_gate_open": 1.0,
            "vl_answers_changed_gate_open": 0.0, "trainable_parameters": 10, "train_seconds": 1.0}


def test_each_entry_shows_its_seeds_and_the_header_says_they_differ():
    text = stage_a_grid({"ablations": {"steps": 2000, "seeds": 2, "split": "test",
                                       "rows": [_row("reference", 5, 0.99, [0.98, 1.0]), _row("k=4", 2, 0.9)]}})
    assert "seeds per entry as the seeds column says" in text and "| seeds |" in text
    assert "| reference | the recipe | 5 | 0.990 [0.980, 1.000] |" in text and "| k=4 | k=4 | 2 | 0.900 |" in text
    same = stage_a_grid({"ablations": {"steps": 400, "seeds": 1, "split": "test", "rows": [_row("reference", 1, 0.5)]}})
    assert "400 steps per entry, 1 seed(s)" in same


def test_intervals_of_counts_and_scores_never_go_below_zero():
    from safe.training.ablation import summarise

    runs = {f"reference/seed{k}": {"audio_accuracy": 1.0, "vl_accuracy_gate_open": 1.0, "caption_cider_d": c,
                                   "vl_answers_changed_gate_open": n, "trainable_parameters": 1, "train_seconds": 1.0}
            for k, (n, c) in enumerate(((0, 0.1), (1, 8.0)))}
    row = summarise(runs, {"reference": []})[0]
    assert row["vl_answers_changed_gate_open_ci"][0] == 0.0 and row["caption_cider_d_ci"][0] == 0.0
    assert row["vl_answers_changed_gate_open_ci"][1] > 1.0 and row["audio_accuracy_ci"] == [1.0, 1.0]
