"""Metric parity: values worked out by hand (and, for ROUGE, against rouge-score itself)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmkit.tasks.mechanisms.scores import (
    classification_metrics,
    normalize_answer,
    regression_metrics,
    rouge,
    squad,
    token_f1,
)

# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),
        ("  an   apple, a day ", "apple day"),
        ("U.S.A.", "usa"),
        ("theory of anarchy", "theory of anarchy"),  # articles only as whole words
        ('A-ha\'s "Take On Me"', "ahas take on me"),
        ("Théâtre   du Soleil", "théâtre du soleil"),
        ("the", ""),
    ],
)
def test_official_squad_normalisation(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_token_f1_by_hand() -> None:
    # pred {denver, broncos}, gold {denver, broncos, team}: P = 1, R = 2/3 → F1 = 0.8
    assert token_f1("Denver Broncos", "the Denver Broncos team") == pytest.approx(0.8)
    # repeated tokens count by multiplicity: pred {a:2 → 'x x y'}, gold 'x y y': common x1 y1 = 2; P=R=2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0  # SQuAD v2: empty matches empty
    assert token_f1("", "Paris") == 0.0
    assert token_f1("London", "Paris") == 0.0


def test_squad_takes_the_best_gold_answer() -> None:
    result = squad(
        {"q1": "Broncos", "q2": "in the year 1066", "q3": "Rome"},
        {"q1": ["Denver Broncos", "Broncos"], "q2": ["1066"], "q3": ["Paris"]},
    )
    # EM: 1, 0, 0 → 33.33; F1: 1, 2·(1/2·1)/(1/2+1) = 2/3 ('in year 1066' vs '1066': P=1/3, R=1 → 0.5), 0
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)


def test_squad_v2_has_and_no_answer_split() -> None:
    result = squad(
        {"a": "France", "b": "", "c": "Paris", "d": "the Seine river"},
        {"a": ["France"], "b": [], "c": [], "d": ["Seine"]},
        version_2=True,
    )
    # exact: a 1, b 1 (empty = empty), c 0, d 0 → 50; F1: a 1, b 1, c 0, d 2·(1/2·1)/(3/2) = 2/3
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["NoAns_exact"] == pytest.approx(50.0)
    assert (result["HasAns_total"], result["NoAns_total"]) == (2, 2)


def test_squad_v1_refuses_a_question_without_gold_answer() -> None:
    with pytest.raises(ValueError, match="version_2"):
        squad({"a": ""}, {"a": []})


# --------------------------------------------------------------------------- ROUGE


def test_rouge_by_hand() -> None:
    scores = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 shared → 83.33; bigrams: the-cat, on-the, the-mat of 5 → 60; LCS 'the cat on the mat' = 5
    assert scores["rouge1"] == pytest.approx(500 / 6, abs=1e-6)
    assert scores["rouge2"] == pytest.approx(60.0, abs=1e-6)
    assert scores["rougeL"] == pytest.approx(500 / 6, abs=1e-6)
    assert scores["rougeLsum"] == pytest.approx(500 / 6, abs=1e-6)


def test_rouge_stems_and_averages_examples() -> None:
    scores = rouge(["cats running", "completely different"], ["cat runs", "cat runs"])
    # 'cats'→'cat', 'running'/'runs'→'run' (Porter): first pair 100, second 0 → mean 50
    assert scores["rouge1"] == pytest.approx(50.0)


def test_rouge_lsum_scores_sentence_by_sentence() -> None:
    scores = rouge(["d e f. a b c."], ["a b c. d e f."])
    assert scores["rougeL"] == pytest.approx(50.0)  # one LCS over the whole text: 3 of 6
    assert scores["rougeLsum"] == pytest.approx(100.0)  # every reference sentence is matched by some sentence


def test_rouge_matches_rouge_score_exactly() -> None:
    from rouge_score import rouge_scorer

    predictions = ["Police arrested two men on Friday.\nThey were released.", "The match ended in a draw."]
    references = ["Two men were arrested by police.\nBoth were later released.", "A late goal gave City the win."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {name: 0.0 for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            expected[name] += 100 * score.fmeasure / len(predictions)
    assert rouge(predictions, references) == pytest.approx(expected)


# --------------------------------------------------------------------------- classification


def test_accuracy_and_macro_f1_by_hand() -> None:
    result = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2])
    # per class F1: 1, 2/3 (P 1/2, R 1), 2/3 (P 1, R 1/2) → macro 7/9
    assert result == pytest.approx({"accuracy": 0.75, "f1": 7 / 9})


def test_regression_metrics() -> None:
    result = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert result["mse"] == pytest.approx(1 / 3)
    assert 0.9 < result["pearson"] < 1.0


def test_metrics_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, llmkit.tasks.mechanisms.scores; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
