"""Generated documentation (safe.reporting.docs): the README's short table and docs/results.md, from a
metrics.json shaped like the demo's (numbers of the README's fresh-clone run)."""
from __future__ import annotations

import re

import pytest

from safe.reporting.docs import END, START, DocsError, readme_table, results_page, write_docs
from tests.evaluation.fake_metrics import demo_metrics, full_metrics


@pytest.fixture()
def metrics() -> dict:
    return demo_metrics()


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def _well_formed(text: str) -> None:
    """Every markdown table has as many cells per row as its header."""
    for block in re.findall(r"(?:^\|.*\n)+", text, flags=re.M):
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(widths) == 1, block


def test_readme_table_has_the_six_headline_rows(metrics):
    text = readme_table(metrics)
    rows = dict(_table_rows(text)[1:])
    assert len(rows) == 6
    assert rows["VL accuracy: gate closed / gate open / base"] == \
        "1.000 / 1.000 / 1.000 (0 of 780 answers changed, gate open)"
    assert rows["Audio-question accuracy: SAFE / base"] == "1.000 / 0.122"
    assert rows["Policy accuracy / always-audio"] == "0.995 / 1.000 (0.5 points under)"
    assert rows["Audio-use rate: policy / oracle"] == "0.343 / 0.316 (2.7 points above)"
    assert rows["Latency, policy / always-audio (deployed gate, end to end)"] == "0.87 / 0.93 / 0.81 (batch 1 / 16 / 64)"
    assert rows["Frozen base and encoder byte-identical after training"] == "yes"
    assert "docs/results.md" in text and "safe report --docs" in text
    _well_formed(text)


def test_readme_table_follows_the_metrics(metrics):
    metrics["stage_a"]["frozen_byte_identical"] = False
    metrics["policy"]["test"]["accuracy"] = 0.9
    rows = dict(_table_rows(readme_table(metrics))[1:])
    assert rows["Frozen base and encoder byte-identical after training"] == "NO"
    assert rows["Policy accuracy / always-audio"] == "0.900 / 1.000 (10.0 points under)"


def test_results_page_holds_every_figure_of_the_long_table(metrics):
    text = results_page(metrics)
    assert text.startswith("# Results\n")
    assert "produced by `make demo && make ablations`" in text  # the command recorded in the run
    rows = dict(r for r in _table_rows(text) if len(r) == 2)
    assert rows["Built-in audio encoder, exact tag sets on held-out clips"] == "0.997"
    assert rows["Built-in VL model on audio questions (deaf-guesser check)"] == "passes"
    assert rows["Stage 1 verification"] == "all PASS (2 model pairs, 4 checks)"
    assert rows["Stage A: audio captions exact match / CIDEr-D / BLEU-2"].startswith("0.988 / 8.70 / 0.997")
    assert rows["Stage B: PPO policy accuracy / always-audio / oracle"] == \
        "0.995 / 1.000 / 1.000 (alpha 0.10, early state)"
    assert rows["Stage B: audio-use rate, policy / oracle"] == "0.343 / 0.316 (2.7 points above the oracle)"
    assert rows["Stage B: use above the oracle by kind of row: base already as good / audio does not help / VL / "
                "audio-helped rows skipped"].startswith("+3.2 (38 rows) / +0.0 (0) / +0.0 (0) / -0.5 (6)")
    assert rows["Stage B: confidence / entropy threshold at the same use rate (accuracy)"] == "0.906 / 0.907"
    assert rows["Stage B: PPO at every alpha strictly above every no-slower threshold point"] == "yes (3 of 3)"
    assert rows["Stage B: PPO seeds, accuracy / use rate, mean [95% CI]"] == \
        "0.995 [0.994, 0.997] / 0.344 [0.340, 0.347] (3 seeds)"
    assert rows["Stage C: MLP gate, agreement with PPO on test / accuracy / use rate"] == \
        "9,345 parameters; agreement 0.995; accuracy 0.999; use rate 0.347"
    assert rows["Deployed gate measured end to end: accuracy / use rate"].startswith("0.999 / 0.347")
    assert rows["Deployed gate, batch 1: mean ms per query, base / always-audio / policy (policy / always)"] == \
        "5.22 / 9.70 / 8.48 (0.87)"
    assert rows["A batch of VL questions the policy skips: encoder rows, cost vs base"] == \
        "0 encoder rows of 16; x1.30 the base's time"
    assert rows["Eval: FLOPs per query, audio encoder included: base / always-audio / policy"] == \
        "29.5 M / 54.9 M / 41.5 M (20 of the 64 counted rows used audio)"
    assert rows["Eval: SNR sweep, audio accuracy"].endswith("(clean / -10 / 0 / 10 / 20 / 30 dB)")
    assert rows["Eval: irrelevance stress, VL questions with random other rows' clips: policy false positives / VL "
                "answers changed with the gate forced open"] == "0.030 / 1 of 780"
    assert rows["Eval: the proposal's targets (stage gates, docs/design.md)"] == "3 of 3 PASS"
    for title in ("Per family after Stage A", "Stages B and C: policy vs baselines", "Pareto points of the PPO policy",
                  "Deployed gate, measured end to end", "Evaluation: retention", "Evaluation: stage gates",
                  "Ablations: Stage A", "Ablations: Stages B and C", "Time per stage"):
        assert f"\n## {title}\n" in text, title
    metrics["ablations"]["rows"][1]["changes"] = {"lambda_retention": 0, "retention_every": 0}  # a dict reads alike
    assert results_page(metrics) == text
    grid = {r[0]: r for r in _table_rows(text) if r[0] in ("reference", "no retention loss")}
    assert grid["no retention loss"][1:7] == ["lambda_retention=0, retention_every=0", "1", "0.429", "0.149", "664",
                                              "0.278"]
    assert grid["reference"][1] == "the recipe" and grid["reference"][7] == "266,756"
    _well_formed(text)


def test_old_runs_keep_the_deployed_result_under_cascade(metrics):
    metrics["policy"]["cascade"] = metrics["policy"].pop("deployed")
    del metrics["policy"]["config"]["state"]  # recorded before --state existed: a cascade run
    rows = dict(r for r in _table_rows(results_page(metrics)) if len(r) == 2)
    assert rows["Deployed gate measured end to end: accuracy / use rate"].startswith("0.999 / 0.347")
    assert rows["Stage B: PPO policy accuracy / always-audio / oracle"].endswith("cascade state)")


def test_missing_numbers_leave_rows_out_never_invent_them(metrics):
    assert results_page({}).count("\n|") == 0 and "`make demo`" in results_page({})
    assert "make demo" in readme_table({}) and "|" not in readme_table({})
    only_a = {"stage_a": metrics["stage_a"]}
    rows = dict(_table_rows(readme_table(only_a))[1:])
    assert list(rows) == ["VL accuracy: gate closed / gate open / base", "Audio-question accuracy: SAFE / base",
                          "Frozen base and encoder byte-identical after training"]
    page = results_page(only_a, command="safe train")
    assert "produced by `safe train`" in page and "Stage B" not in page and "Ablations" not in page
    # the report's older fixture has no Stage A grid: the Stage B variants still get their table
    page = results_page(full_metrics())
    assert "## Ablations: Stages B and C" in page and "## Ablations: Stage A" not in page
    _well_formed(page)


def test_strings_from_the_metrics_cannot_break_a_table(metrics):
    metrics["ablations"]["rows"][0]["name"] = "a | b\nc"
    text = results_page(metrics)
    assert "a \\| b c" in text
    _well_formed(text)


def test_write_docs_writes_results_and_replaces_only_the_readme_block(metrics, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# SAFE\n\nintro\n\n{START}\nold table\n{END}\n\n## Using it\ntext\n", encoding="utf-8")
    written = write_docs(metrics, tmp_path / "docs", readme)
    assert written == [tmp_path / "docs" / "results.md", readme]
    assert (tmp_path / "docs" / "results.md").read_text(encoding="utf-8") == results_page(metrics)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# SAFE\n\nintro\n\n" + START + "\n") and text.endswith(END + "\n\n## Using it\ntext\n")
    assert "old table" not in text and readme_table(metrics).strip() in text
    write_docs(metrics, tmp_path / "docs", readme)
    assert readme.read_text(encoding="utf-8") == text  # regenerating from the same run changes nothing
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["results.md"]  # no temporary files left


@pytest.mark.parametrize("body", ["no markers here\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"])
def test_write_docs_refuses_a_readme_without_its_markers(metrics, tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body, encoding="utf-8")
    with pytest.raises(DocsError, match=re.escape(str(readme))) as err:
        write_docs(metrics, tmp_path / "docs", readme)
    assert isinstance(err.value, ValueError) and START in str(err.value)
    assert readme.read_text(encoding="utf-8") == body and not (tmp_path / "docs").exists()  # nothing written


def test_write_docs_without_a_readme(metrics, tmp_path):
    assert write_docs(metrics, tmp_path / "d") == [tmp_path / "d" / "results.md"]
    with pytest.raises(DocsError, match="missing.md"):
        write_docs(metrics, tmp_path / "d", tmp_path / "missing.md")


def test_retention_table_shows_the_mcnemar_p_value_the_evaluation_writes(metrics):
    """The evaluation writes McNemarResult.to_dict() (key ``pvalue``); the table must show it, not a dash."""
    from safe.evaluation.stats import mcnemar

    assert "pvalue" in mcnemar([1, 0, 1], [1, 1, 1]).to_dict()
    row = next(line for line in results_page(metrics).splitlines() if line.startswith("| gate open |"))
    assert row.rstrip(" |").endswith("0.500"), row


def test_state_ablation_section_shows_mean_and_ci_per_entry_and_the_verdict(metrics):
    row = {"name": "question + image + preview (early)", "parts": ["question", "image", "preview"], "state_dim": 290,
           "seeds": 5, "collapsed": 0, "accuracy": 0.9912, "accuracy_ci": [0.9851, 0.9973], "use_rate": 0.33,
           "use_rate_ci": [0.31, 0.35], "mean_latency_ms": 1.5, "mean_latency_ms_ci": [1.4, 1.6], "state_ms": 0.05}
    metrics["policy_state_ablation"] = {
        "rows": [row, {**row, "name": "question", "state_dim": 128, "accuracy": 0.95, "accuracy_ci": [0.9, 1.0]}],
        "best": row["name"], "default": row["name"], "default_is_best": True, "seeds": 5, "ppo_steps": 200,
        "alpha": 0.1, "cost_batch": 16, "preview_embedding_ms": 0.2, "split": "test"}
    text = results_page(metrics)
    assert "\n## Ablations: the policy's state\n" in text
    assert "The default state (`question + image + preview (early)`) is the best measured." in text
    got = {r[0]: r for r in _table_rows(text)}
    assert got["question + image + preview (early)"][1:5] == ["290", "0.991 [0.985, 0.997]", "0.330 [0.310, 0.350]",
                                                             "1.500 [1.400, 1.600]"]
    metrics["policy_state_ablation"]["default_is_best"] = False
    metrics["policy_state_ablation"]["best"] = "question"
    assert "Best measured: `question`; the default state is" in results_page(metrics)
    _well_formed(text)
