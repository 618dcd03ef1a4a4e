"""Metrics computed the way the reference scripts compute them, so numbers compare directly.

- classification: accuracy and macro-F1 from scikit-learn (0–1); regression: mse and Pearson r.
- summarization: ROUGE-1/2/L/Lsum from `rouge-score` with Porter stemming, mean F-measure × 100.
- QA: SQuAD exact match / F1 with the official answer normalisation (× 100); SQuAD v2 adds the
  HasAns/NoAns breakdown of the official v2 script.

Plain Python/numpy in, plain floats out; no torch or transformers here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

# --------------------------------------------------------------------------- classification


def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """`accuracy` and macro-averaged `f1` (every class counts the same, as GLUE reports F1 per class)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def regression_metrics(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Mean squared error and Pearson correlation (STS-B style); r is 0 when either side is constant."""
    import numpy as np

    predicted, gold = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    pearson = float(np.corrcoef(predicted, gold)[0, 1]) if predicted.std() > 0 and gold.std() > 0 else 0.0
    return {"mse": float(np.mean((predicted - gold) ** 2)), "pearson": pearson}


# --------------------------------------------------------------------------- summarization

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_on_lines(text: str) -> str:
    """rougeLsum scores sentence by sentence, one per line; text without newlines is split after . ! ?"""
    text = text.strip()
    return text if "\n" in text else "\n".join(SENTENCE_END.split(text))


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE F-measures × 100 over the examples (rouge-score, stemming on, like the HF scripts)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(sentences_on_lines(reference), sentences_on_lines(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(predictions) for name, total in totals.items()}


# --------------------------------------------------------------------------- question answering

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, drop punctuation, drop a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 after normalisation; an empty answer matches only an empty answer (SQuAD v2 rule)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: dict[str, str], references: dict[str, list[str]], version_2: bool = False) -> dict[str, float]:
    """SQuAD `exact_match` and `f1` (0–100): the best score over the gold answers of each question.

    With `version_2`, a question without gold answers expects the empty answer, and the result adds the
    official script's `HasAns_*` / `NoAns_*` breakdown.
    """
    if not references:
        raise ValueError("no references to score")
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qid, golds in references.items():
        if qid not in predictions:
            raise ValueError(f"no prediction for question {qid!r}")
        golds = [g for g in golds if normalize_answer(g)] if version_2 else list(golds)
        has_answer[qid] = bool(golds)
        if not golds:
            if not version_2:
                raise ValueError(f"question {qid!r} has no gold answer (SQuAD v2 data needs version_2)")
            golds = [""]
        exact_scores[qid] = max(exact_match(predictions[qid], g) for g in golds)
        f1_scores[qid] = max(token_f1(predictions[qid], g) for g in golds)
    result = _mean_scores(exact_scores, f1_scores, list(references))
    if version_2:
        for prefix, wanted in (("HasAns", True), ("NoAns", False)):
            ids = [qid for qid, has in has_answer.items() if has == wanted]
            if ids:
                part = _mean_scores(exact_scores, f1_scores, ids)
                result.update({f"{prefix}_exact": part["exact_match"], f"{prefix}_f1": part["f1"]})
            result[f"{prefix}_total"] = float(len(ids))
    return result


def _mean_scores(exact_scores: dict[str, float], f1_scores: dict[str, float], ids: list[str]) -> dict[str, float]:
    return {
        "exact_match": 100 * sum(exact_scores[i] for i in ids) / len(ids),
        "f1": 100 * sum(f1_scores[i] for i in ids) / len(ids),
    }
