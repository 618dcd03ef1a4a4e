"""Question answering on SQuAD-format data (`question`, `context`, `answers: {text, answer_start}`).

Two methods, picked by `data.qa_mode` (default `auto`: by the model's architecture):
- extractive, for encoders (BERT family): the model points at the answer's first and last token. Long
  contexts become overlapping windows (`doc_stride`); the best span over all windows of a question wins
  (`n_best_size` candidates, at most `max_answer_length` tokens); with SQuAD v2 data, "no answer" wins
  when the [CLS] score beats the best span by more than `null_score_diff_threshold`.
- generative, for decoders (GPT-2) and encoder-decoders (T5): `context + "\\nQuestion: ..." + "\\nAnswer:"`
  → the answer text, through the same prompt → target mechanism as summarization (`prompting.py`).
Both are scored with the official SQuAD exact match / F1 (v2 breakdown when some questions have no answer).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.tasks.base import Evaluation, Prepared, Task, require_nonempty_text, tokenize
from llmkit.tasks.prompting import PromptToTarget

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

EXAMPLE_COLUMNS = ("example_index", "offset_mapping")


class QuestionAnswering(Task):
    """The registered `qa` task: chooses extractive or generative QA for the model at hand."""

    name = "qa"
    roles = ("question", "context")
    optional_roles = ("answers", "answer", "id")
    target_roles = ("answers", "answer")
    auto_class_name = "AutoModelForQuestionAnswering"
    mapping_name = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"
    needs = "an encoder (extractive QA) or a decoder / encoder-decoder (generative QA)"

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        from llmkit.models import is_decoder_only, is_encoder_decoder

        writes_text = is_decoder_only(config) or is_encoder_decoder(config)
        mode = recipe.data.qa_mode
        if mode == "auto":
            mode = "generative" if writes_text else "extractive"
        if mode == "extractive":
            if writes_text:
                raise LlmkitError(
                    f"recipe field `data.qa_mode`: extractive QA needs an encoder (BERT family); model type "
                    f"`{config.model_type}` generates text: use `data.qa_mode: generative` (or auto)"
                )
            return ExtractiveQA()
        if not writes_text:
            raise LlmkitError(
                f"recipe field `data.qa_mode`: generative QA needs a decoder (GPT-2) or encoder-decoder (T5); model "
                f"type `{config.model_type}` is encoder-only: use `data.qa_mode: extractive` (or auto)"
            )
        return GenerativeQA().specialize(config, recipe)


# --------------------------------------------------------------------------- shared by both methods


def answer_lists(value: Any) -> tuple[list[str], list[int | None]]:
    """Gold answers of one row as (texts, starts), from SQuAD's {text: [...], answer_start: [...]},
    a list of {text, answer_start} records, or a plain answer string."""
    if value is None:
        return [], []
    if isinstance(value, str):
        return [value], [None]
    if isinstance(value, dict):
        texts = list(value.get("text") or [])
        starts = list(value.get("answer_start") or [None] * len(texts))
        return [str(t) for t in texts], starts
    if isinstance(value, list):
        records = [a if isinstance(a, dict) else {"text": a} for a in value]
        return [str(a.get("text", "")) for a in records], [a.get("answer_start") for a in records]
    raise LlmkitError(f"data column `answers` holds {type(value).__name__}; expected SQuAD's {{text, answer_start}}")


def gold_answers(examples: Dataset) -> list[list[str]]:
    if "answers" in examples.column_names:
        return [answer_lists(value)[0] for value in examples["answers"]]
    return [[str(a)] if a not in (None, "") else [] for a in examples["answer"]]


def question_ids(examples: Dataset) -> list[str]:
    if "id" in examples.column_names:
        return [str(i) for i in examples["id"]]
    return [str(i) for i in range(len(examples))]


def is_version_2(recipe: Recipe, golds: list[list[str]]) -> bool:
    """SQuAD v2 scoring when the recipe says so or when some eval question has no answer."""
    return recipe.data.version_2_with_negative or any(not g for g in golds)


def squad_scores(predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
    from llmkit.metrics import squad

    golds = gold_answers(examples)
    ids = question_ids(examples)
    if len(set(ids)) != len(ids):
        ids = [str(i) for i in range(len(ids))]
    return squad(
        dict(zip(ids, predictions, strict=True)), dict(zip(ids, golds, strict=True)), is_version_2(recipe, golds)
    )


def answer_records(predictions: list[str], examples: Dataset, scores: list[float] | None = None) -> list[dict]:
    golds = gold_answers(examples) if {"answers", "answer"} & set(examples.column_names) else None
    records = []
    for index, (qid, question, context, prediction) in enumerate(
        zip(question_ids(examples), examples["question"], examples["context"], predictions, strict=True)
    ):
        record: dict[str, Any] = {"id": qid, "question": question, "context": context, "answer": prediction}
        if scores is not None:
            record["score"] = round(float(scores[index]), 4)
        if golds is not None:
            record["references"] = golds[index]
        records.append(record)
    return records


def qa_input(row: dict[str, Any]) -> dict[str, Any]:
    """A `predict` input: a row with question and context, or `--text` holding such a JSON object."""
    if "question" not in row and isinstance(row.get("text"), str):
        try:
            parsed = json.loads(row["text"])
        except json.JSONDecodeError:
            parsed = None
        row = parsed if isinstance(parsed, dict) else row
    if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
        raise LlmkitError(
            'QA predict needs a question and a context: --file rows.jsonl with {"question": ..., "context": ...} '
            "per line, or --text with such a JSON object"
        )
    return row


# --------------------------------------------------------------------------- generative


class GenerativeQA(PromptToTarget):
    """`context \\nQuestion: q \\nAnswer:` → answer + EOS (decoders; encoder-decoders read the same prompt)."""

    name = QuestionAnswering.name
    roles = QuestionAnswering.roles
    optional_roles = QuestionAnswering.optional_roles
    needs = "a decoder-only (GPT-2) or encoder-decoder (T5) model"
    default_separator = "\nAnswer:"
    text_role = "question"
    target_role = "answers"

    def validate(self, dataset: Dataset, split: str) -> None:
        require_nonempty_text(dataset, "question", split)
        require_nonempty_text(dataset, "context", split)
        if not {"answers", "answer"} & set(dataset.column_names):
            raise LlmkitError(
                f"the {split} data has no `answers` (SQuAD format) or `answer` (text) column; "
                f"columns are: {', '.join(dataset.column_names)} — set `data.columns.answers` or `data.columns.answer`"
            )

    def prompt_parts(self, batch: dict[str, list]) -> tuple[list[str], list[str]]:
        return [str(c) for c in batch["context"]], [f"\nQuestion: {str(q).strip()}" for q in batch["question"]]

    def target_texts(self, batch: dict[str, list], split: str) -> list[str]:
        """The first gold answer; an unanswerable question (SQuAD v2) learns the empty answer."""
        if "answers" in batch:
            return [(answer_lists(value)[0] or [""])[0] for value in batch["answers"]]
        return ["" if a is None else str(a) for a in batch["answer"]]

    def score(self, predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
        return squad_scores(predictions, examples, recipe)

    def records(self, predictions: list[str], examples: Dataset) -> list[dict[str, Any]]:
        return answer_records(predictions, examples)

    def input_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return qa_input(row)


# --------------------------------------------------------------------------- extractive


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


class ExtractiveQA(Task):
    name = "qa"
    roles = ("question", "context", "answers")
    optional_roles = ("id",)
    auto_class_name = "AutoModelForQuestionAnswering"
    mapping_name = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"
    needs = "an encoder with a span head (BERT family)"

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        return [
            f"contexts longer than {recipe.data.max_length} tokens are split into overlapping windows "
            f"(data.doc_stride = {doc_stride(recipe)})"
        ]

    def text_roles(self) -> tuple[str, ...]:
        return ("question", "context")

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
        answers, scores = best_spans(
            list(examples["context"]), features, start_logits, end_logits, recipe, recipe.data.version_2_with_negative
        )
        return answer_records(answers, Dataset.from_list(rows), scores)


def check_answers(dataset: Dataset, split: str) -> None:
    """Questions and contexts are text, and every answer_start points at its answer text in the context."""
    require_nonempty_text(dataset, "question", split)
    require_nonempty_text(dataset, "context", split)
    ids = question_ids(dataset)
    for index, (context, value) in enumerate(zip(dataset["context"], dataset["answers"], strict=True)):
        texts, starts = answer_lists(value)
        for text, start in zip(texts, starts, strict=True):
            if not isinstance(start, int) or context[start : start + len(text)] != text:
                found = context[start : start + len(text)] if isinstance(start, int) else None
                raise LlmkitError(
                    f"data column `answers`: in {split} row {index} (id {ids[index]}), answer_start {start} does not "
                    f"point at the answer {text!r} in the context (found {found!r})"
                )


def doc_stride(recipe: Recipe) -> int:
    """Tokens two windows of one context share: the recipe's, or a quarter of the window."""
    return recipe.data.doc_stride or max(recipe.data.max_length // 4, 1)


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
        field = "data.doc_stride" if recipe.data.doc_stride else "data.max_length"
        raise LlmkitError(
            f"recipe field `{field}`: windows of {recipe.data.max_length} tokens leave {room} for the context next "
            f"to the longest question ({longest} tokens); data.doc_stride ({stride}) must be less than that "
            "(lower data.doc_stride or raise data.max_length)"
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
            f"cannot split contexts into windows of data.max_length = {recipe.data.max_length} with data.doc_stride = "
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
    from llmkit.tasks.shards import spread

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

    data = recipe.data
    best: tuple[float, int, int] | None = None
    null_score = None
    for feature in features:
        starts, ends, offsets = start_logits[feature], end_logits[feature], offset_maps[feature]
        feature_null = float(starts[0] + ends[0])
        null_score = feature_null if null_score is None else min(null_score, feature_null)
        top_starts = np.argsort(starts)[::-1][: data.n_best_size]
        top_ends = np.argsort(ends)[::-1][: data.n_best_size]
        for s in top_starts:
            if s >= len(offsets) or offsets[s] is None:
                continue
            for e in top_ends:
                if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > data.max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                if best is None or score > best[0]:
                    best = (score, offsets[s][0], offsets[e][1])
    if best is None or (version_2 and null_score is not None and null_score - best[0] > data.null_score_diff_threshold):
        return "", null_score if null_score is not None else 0.0
    return context[best[1] : best[2]], best[0]
