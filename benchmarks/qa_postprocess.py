"""Extractive QA post-processing: windows' start/end scores → best answer span per question (examples/s).

Real SQuAD-format questions (XQuAD-en and the SQuAD v2 dev sample), windowed by llmkit's own
`ExtractiveQA.eval_features` with the BERT tokenizer (384 tokens, stride 128); the scores are seeded random
numbers, since the search cost does not depend on what a model predicts. Timed: `best_spans` (n-best
start × end search over every window of a question) and, separately, SQuAD EM/F1 scoring.
"""

from __future__ import annotations

import gc
from typing import Any

from benchmarks.common import Result, clock, data_dir, median, skipped


def run(quick: bool) -> list[Result]:
    root = data_dir()
    folder = root / "squad-subsets" if root else None
    vocab = root / "tokenizers" / "bert-base-uncased" if root else None
    if folder is None or not folder.is_dir() or vocab is None or not vocab.is_dir():
        return [
            skipped(
                "extractive QA post-processing examples/s", "no shared SQuAD data", "qa_postprocess_examples_per_second"
            )
        ]
    try:
        from llmkit.tasks.qa import TASK
        from llmkit.tasks.qa.answers import squad_scores
        from llmkit.tasks.qa.extractive import ExtractiveQA, best_spans
    except ImportError as err:
        return [skipped("extractive QA post-processing examples/s", f"llmkit.tasks.qa: {err}")]
    import numpy as np
    from transformers import AutoTokenizer

    from llmkit.data import load_local
    from llmkit.recipe import recipe_from_mapping

    results = []
    for name, version_2 in (("xquad.en.json", False), ("haystack-squad2-dev-small.json", True)):
        examples = load_local(folder / name, "eval", TASK.read_file)
        if quick:
            examples = examples.select(range(min(400, len(examples))))
        recipe = recipe_from_mapping(
            {
                "task": "qa",
                "model": {"from_config": {"model_type": "bert"}},
                "data": {"train": str(folder / name), "max_length": 384},
                "qa": {"doc_stride": 128, "version_2_with_negative": version_2},
                "training": {"output_dir": "unused"},
            }
        )
        tokenizer = AutoTokenizer.from_pretrained(str(vocab))
        features = ExtractiveQA().eval_features(examples, tokenizer, recipe)
        width = max(len(ids) for ids in features["input_ids"])
        rng = np.random.default_rng(0)
        starts = rng.normal(size=(len(features), width)).astype(np.float32)
        ends = rng.normal(size=(len(features), width)).astype(np.float32)
        contexts = list(examples["context"])
        spans: list[float] = []
        scoring: list[float] = []
        answers: Any = None
        for _ in range(5 if quick else 9):
            gc.collect()  # as timeit does: a collection left over from earlier work is not the post-processing's
            start = clock()
            answers, _scores = best_spans(contexts, features, starts, ends, recipe, version_2)
            spans.append(len(examples) / (clock() - start))
            start = clock()
            squad_scores(answers, examples, recipe)
            scoring.append(len(examples) / (clock() - start))
        results.append(
            Result(
                f"extractive QA post-processing examples/s ({name.split('.')[0]})",
                median(spans),
                unit="ex/s",
                key=f"qa_postprocess_examples_per_second{'_v2' if version_2 else ''}",
                note=f"{len(examples)} questions, {len(features)} windows of ≤384 tokens; n-best "
                f"{recipe.options.n_best_size}; EM/F1 scoring {median(scoring):,.0f} ex/s",
                details={"postprocess_examples_per_second": spans, "scoring_examples_per_second": scoring},
            )
        )
    return results
