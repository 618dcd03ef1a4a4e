"""Extractive QA: the model points at the answer's first and last token, window by window; the best span
over all windows of a question wins."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from llmkit.errors import LlmkitError
from llmkit.tasks.base import Evaluation, Prepared, Task, tokenize
from llmkit.tasks.mechanisms.marking import marked, real_positions
from llmkit.tasks.qa.answers import (
    SquadFiles,
    answer_lists,
    answer_records,
    check_answers,
    gold_answers,
    is_version_2,
    qa_input,
    squad_scores,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

EXAMPLE_COLUMNS = ("example_index", "offset_mapping")


class ModelInputsCollator:
    """Pads windows to `max_length` and leaves out the bookkeeping columns kept for span post-processing.

    The span head's softmax runs over every position, padding included (as in transformers' QA models), so
    padding each batch to its own longest window would make a window's loss depend on its neighbours: on
    the batch size, and on how many processes share a batch. Padded to `max_length`, as Hugging Face's
    `run_qa.py` does, it does not (windows of long contexts fill `max_length` anyway)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pad([{k: v for k, v in f.items() if k not in EXAMPLE_COLUMNS} for f in features])


class ExtractiveQA(SquadFiles, Task):
    name = "qa"
    roles = ("question", "context", "answers")
    optional_roles = ("id",)
    auto_class_name = "AutoModelForQuestionAnswering"
    mapping_name = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"
    needs = "an encoder with a span head (BERT family)"
    role_kinds: ClassVar[dict[str, str]] = {"answers": "answers", "id": "any"}

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        """The window with the answer span marked (or that the answer is not in it)."""
        kept = real_positions(batch, index)
        ids = [batch["input_ids"][index][p] for p in kept]
        start, end = batch["start_positions"][index], batch["end_positions"][index]
        if start == end == 0:
            return tokenizer.decode(ids) + "  → no answer in this window"
        return marked(ids, ids, [start <= p <= end for p in kept], tokenizer)

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        return [
            f"contexts longer than {recipe.data.max_length} tokens are split into overlapping windows "
            f"(qa.doc_stride = {doc_stride(recipe)})"
        ]

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        check_stride(recipe, raw, tokenizer)
        features = {}
        for split, dataset in raw.items():
            check_answers(dataset, split)
            if split == "train":
                features[split] = tokenize(dataset, self._train_encoder(recipe, tokenizer), recipe, "Windowing train")
            else:
                features[split] = self.eval_features(dataset, tokenizer, recipe)
        return Prepared(features.get("train"), features.get("eval"), raw.get("eval"))

    def _train_encoder(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Callable[[dict], dict]:
        """Each window labelled with the answer's token span, or [CLS] when the answer is not inside it."""

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = windows(tokenizer, batch["question"], batch["context"], recipe)
            context_side = 1 if tokenizer.padding_side == "right" else 0
            starts, ends = [], []
            for i, offsets in enumerate(encoded["offset_mapping"]):
                ids = encoded["input_ids"][i]
                cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
                texts, answer_starts = answer_lists(batch["answers"][encoded["overflow_to_sample_mapping"][i]])
                span = None
                if texts:
                    first, last = answer_starts[0], answer_starts[0] + len(texts[0])
                    span = token_span(offsets, encoded.sequence_ids(i), context_side, first, last)
                starts.append(span[0] if span else cls)
                ends.append(span[1] if span else cls)
            encoded.pop("offset_mapping")
            encoded.pop("overflow_to_sample_mapping")
            return {**encoded, "start_positions": starts, "end_positions": ends}

        return encode

    def eval_features(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, recipe: Recipe) -> Dataset:
        """Windows that remember their question (`example_index`) and their context characters (offsets)."""
        context_side = 1 if tokenizer.padding_side == "right" else 0

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            encoded = windows(tokenizer, batch["question"], batch["context"], recipe)
            sample = encoded.pop("overflow_to_sample_mapping")
            encoded["example_index"] = [indices[s] for s in sample]
            encoded["offset_mapping"] = [
                [o if side == context_side else None for o, side in zip(offsets, encoded.sequence_ids(i), strict=True)]
                for i, offsets in enumerate(encoded["offset_mapping"])
            ]
            return dict(encoded)

        return dataset.map(
            encode,
            batched=True,
            with_indices=True,
            num_proc=recipe.data.num_proc,
            remove_columns=dataset.column_names,
            desc="Windowing eval",
        )

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        return ModelInputsCollator(tokenizer, recipe.data.max_length)

    # ------------------------------------------------------------------ evaluation and inference

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Start/end scores of every window (one number per token, not vocabulary logits) → best spans."""
        assert prepared.eval is not None and prepared.eval_examples is not None
        output = trainer.predict(prepared.eval, metric_key_prefix="eval")
        start_logits, end_logits = output.predictions[:2]
        examples = prepared.eval_examples
        version_2 = is_version_2(recipe, gold_answers(examples))
        answers, scores = best_spans(
            list(examples["context"]), prepared.eval, start_logits, end_logits, recipe, version_2, across_processes=True
        )
        metrics = {f"eval_{k}": v for k, v in squad_scores(answers, examples, recipe).items()}
        metrics.update({k: v for k, v in output.metrics.items() if k.endswith(("_runtime", "_samples_per_second"))})
        return Evaluation(metrics, answer_records(answers, examples, scores))

    def export_head(self) -> Any:
        """`llmkit export`: the span head's start and end scores."""
        from llmkit.export.heads import Head

        return Head(("start_logits", "end_logits"))

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        import numpy as np
        import torch
        from datasets import Dataset

        rows = [qa_input(row) for row in rows]
        examples = Dataset.from_list([{"question": r["question"], "context": r["context"]} for r in rows])
        features = self.eval_features(examples, tokenizer, recipe)
        collate = ModelInputsCollator(tokenizer, recipe.data.max_length)
        starts, ends = [], []
        model.eval()
        for first in range(0, len(features), 16):
            batch = collate([features[i] for i in range(first, min(first + 16, len(features)))])
            with torch.no_grad():
                output = model(**{k: v.to(model.device) for k, v in batch.items()})
            starts.extend(output.start_logits.float().cpu().numpy())
            ends.extend(output.end_logits.float().cpu().numpy())
        width = max(len(s) for s in starts)
        padded = [np.pad(s, (0, width - len(s)), constant_values=-1e4) for s in (*starts, *ends)]
        start_logits, end_logits = np.stack(padded[: len(starts)]), np.stack(padded[len(starts) :])
        version_2 = recipe.options.version_2_with_negative
        answers, scores = best_spans(list(examples["context"]), features, start_logits, end_logits, recipe, version_2)
        return answer_records(answers, Dataset.from_list(rows), scores)


def doc_stride(recipe: Recipe) -> int:
    """Tokens two windows of one context share: the recipe's, or a quarter of the window."""
    return recipe.options.doc_stride or max(recipe.data.max_length // 4, 1)


def check_stride(recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> None:
    """The rule of HF `run_qa`: the overlap must be shorter than the room a window leaves for its context
    (max_length minus the question and the special tokens), checked against the longest question."""
    questions = [q.lstrip() for dataset in raw.values() for q in dataset["question"]]
    if not questions:
        return
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = recipe.data.max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    stride = doc_stride(recipe)
    if stride >= room:
        field = "qa.doc_stride" if recipe.options.doc_stride else "data.max_length"
        raise LlmkitError(
            f"recipe field `{field}`: windows of {recipe.data.max_length} tokens leave {room} for the context next "
            f"to the longest question ({longest} tokens); qa.doc_stride ({stride}) must be less than that "
            "(lower qa.doc_stride or raise data.max_length)"
        )


def windows(tokenizer: PreTrainedTokenizerBase, questions: list[str], contexts: list[str], recipe: Recipe) -> Any:
    """Question + context windows of `max_length` tokens overlapping by `doc_stride`; only the context is cut."""
    questions = [q.lstrip() for q in questions]  # leading spaces in SQuAD questions waste window room
    question_first = tokenizer.padding_side == "right"
    try:
        return tokenizer(
            questions if question_first else contexts,
            contexts if question_first else questions,
            truncation="only_second" if question_first else "only_first",
            max_length=recipe.data.max_length,
            stride=doc_stride(recipe),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
    except Exception as err:  # the tokenizer refuses a question that leaves no room for the context
        raise LlmkitError(
            f"cannot split contexts into windows of data.max_length = {recipe.data.max_length} with qa.doc_stride = "
            f"{doc_stride(recipe)}: {str(err).splitlines()[0][:200]} (lower doc_stride or raise max_length)"
        ) from None


def token_span(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], side: int, first: int, last: int
) -> tuple[int, int] | None:
    """Token indices of the characters [first, last) when the window holds all of them, else None."""
    context = [i for i, s in enumerate(sequence_ids) if s == side]
    if not context or offsets[context[0]][0] > first or offsets[context[-1]][1] < last:
        return None
    start = next(i for i in context if offsets[i][1] > first)
    end = next(i for i in reversed(context) if offsets[i][0] < last)
    return start, end


def best_spans(
    contexts: list[str],
    features: Dataset,
    start_logits: Any,
    end_logits: Any,
    recipe: Recipe,
    version_2: bool,
    across_processes: bool = False,
) -> tuple[list[str], list[float]]:
    """The highest-scoring valid span of each question over all its windows (n-best start × end search).

    With `version_2`, a question gets the empty answer when the null score (both pointers on [CLS]) of
    its best window exceeds the best span's score by more than `null_score_diff_threshold`.
    `across_processes`: every process of a run calls it with all windows' logits; each searches a share
    of the questions and all get every answer back, in order.
    """
    from llmkit.tasks.mechanisms.shards import spread

    by_example: dict[int, list[int]] = defaultdict(list)
    for feature, example in enumerate(features["example_index"]):
        by_example[example].append(feature)
    offset_maps = list(features["offset_mapping"])

    def search(examples: range) -> list[tuple[str, float]]:
        return [
            best_span(contexts[e], by_example[e], offset_maps, start_logits, end_logits, recipe, version_2)
            for e in examples
        ]

    chunks = [range(first, min(first + 256, len(contexts))) for first in range(0, len(contexts), 256)]
    found = [pair for part in (spread(chunks, search) if across_processes else map(search, chunks)) for pair in part]
    return [answer for answer, _ in found], [score for _, score in found]


def best_span(
    context: str,
    features: list[int],
    offset_maps: list[Any],
    start_logits: Any,
    end_logits: Any,
    recipe: Recipe,
    version_2: bool,
) -> tuple[str, float]:
    """One question's answer and score from its windows (`features`: their rows in the logits)."""
    import numpy as np

    qa = recipe.options
    best: tuple[float, int, int] | None = None
    null_score = None
    for feature in features:
        starts, ends, offsets = start_logits[feature], end_logits[feature], offset_maps[feature]
        feature_null = float(starts[0] + ends[0])
        null_score = feature_null if null_score is None else min(null_score, feature_null)
        top_starts = np.argsort(starts)[::-1][: qa.n_best_size]
        top_ends = np.argsort(ends)[::-1][: qa.n_best_size]
        for s in top_starts:
            if s >= len(offsets) or offsets[s] is None:
                continue
            for e in top_ends:
                if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > qa.max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                if best is None or score > best[0]:
                    best = (score, offsets[s][0], offsets[e][1])
    if best is None or (version_2 and null_score is not None and null_score - best[0] > qa.null_score_diff_threshold):
        return "", null_score if null_score is not None else 0.0
    return context[best[1] : best[2]], best[0]
