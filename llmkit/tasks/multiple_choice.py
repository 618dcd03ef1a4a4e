"""Multiple choice (SWAG, HellaSwag): a `context`, an optional `question` and a list of `choices` → the index
of the right choice (`label`).

Encoders (BERT family) use their multiple-choice head: each choice is the pair (context, question + " " +
choice), as the Hugging Face run_swag example builds it. Decoders (GPT-2, no such head) score each choice by
the length-normalised log-likelihood of " " + choice after the prompt `context [+ " " + question]` and learn
with the cross-entropy over those scores; their run folder is a plain causal LM that `eval` and `predict`
score the same way. Rows may have different numbers of choices: shorter rows are padded and masked.
`choices` is a list column, or a list of columns (`data.columns: {choices: [ending0, ending1, ...]}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from llmkit.errors import LlmkitError
from llmkit.tasks.base import Evaluation, Prepared, Task, require_nonempty_text, tokenize
from llmkit.tasks.mechanisms.marking import learned, real_positions

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

ENCODER_MAPPING = "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"
DECODER_MAPPING = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"


class MultipleChoice(Task):
    name = "multiple_choice"
    roles = ("context", "choices", "label")
    optional_roles = ("question",)
    role_kinds: ClassVar[dict[str, str]] = {"choices": "choices", "label": "label"}
    target_roles = ("label",)
    needs = "a model with a multiple-choice head (BERT family) or a decoder-only language model (GPT-2)"

    def __init__(self, decoder: bool = False) -> None:
        #: a decoder scores choices with its language-model head; an encoder with its multiple-choice head
        self.decoder = decoder
        self.auto_class_name = "AutoModelForCausalLM" if decoder else "AutoModelForMultipleChoice"
        self.mapping_name = DECODER_MAPPING if decoder else ENCODER_MAPPING

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        from llmkit.models import is_decoder_only

        return MultipleChoice(decoder=is_decoder_only(config))

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        encode = self.encoder(recipe, tokenizer)
        features = {}
        for split, dataset in raw.items():
            check_rows(dataset, split, recipe.data.columns)
            features[split] = tokenize(dataset, encode, recipe, f"Tokenizing {split} choices")
        return Prepared(features.get("train"), features.get("eval"), raw.get("eval"))

    def encoder(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Callable[[dict[str, list]], dict]:
        """Rows → features (one token list per choice); the same function for training, eval and predict."""
        max_length = int(recipe.data.max_length)
        return decoder_features(tokenizer, max_length) if self.decoder else encoder_features(tokenizer, max_length)

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        from llmkit.tasks.mechanisms.choice_scoring import ChoiceCollator

        return ChoiceCollator(tokenizer)

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        """The prompt once, then each choice; the right one inside [[ ]]."""
        from llmkit.tasks.mechanisms.choice_scoring import CHOICE_MASK, CHOICE_TOKENS

        label = int(batch["labels"][index])
        prompt, shown = "", []
        for slot, valid in enumerate(batch[CHOICE_MASK][index]):
            if not valid:
                continue
            one = {key: batch[key][index][slot] for key in ("input_ids", "attention_mask")}
            kept = real_positions({key: [value] for key, value in one.items()}, 0)
            part = batch.get(CHOICE_TOKENS, batch.get("token_type_ids"))
            marks = [bool(part[index][slot][p]) for p in kept] if part is not None else [True] * len(kept)
            ids = [one["input_ids"][p] for p in kept]
            prompt = prompt or tokenizer.decode(
                [t for t, m in zip(ids, marks, strict=True) if not m], skip_special_tokens=True
            )
            text = tokenizer.decode([t for t, m in zip(ids, marks, strict=True) if m], skip_special_tokens=True)
            shown.append(learned(text.strip()) if slot == label else text.strip())
        return f"{prompt}  → " + " | ".join(f"({number}) {text}" for number, text in enumerate(shown))

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        counts = sorted({len(choices) for dataset in raw.values() for choices in dataset["choices"]})
        how = (
            "a decoder scores each choice by the mean log-probability of its tokens after the prompt"
            if self.decoder
            else "the multiple-choice head scores each (context, question + choice) pair"
        )
        shown = ", ".join(str(count) for count in counts[:10])
        return [*super().check_notes(recipe, raw), f"choices per row: {shown}; {how}"]

    # ------------------------------------------------------------------ training and evaluation

    def trainer_class(self) -> type[Trainer]:
        from llmkit.tasks.mechanisms.choice_scoring import choice_trainer_class

        return choice_trainer_class(self.decoder)

    def preprocess_logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        from llmkit.tasks.mechanisms.choice_scoring import best_and_scores

        return best_and_scores

    def compute_metrics(self, recipe: Recipe) -> Callable[[Any], dict[str, float]]:
        from llmkit.tasks.mechanisms.choice_scoring import accuracy

        return accuracy

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Loss and accuracy, and one record per row with the choice scores, from one pass over the eval set."""
        output = trainer.predict(prepared.eval, metric_key_prefix="eval")
        examples = prepared.eval_examples
        assert examples is not None and output.predictions is not None
        records = [
            record(row, [float(s) for s in output.predictions[number, 1 : len(row["choices"]) + 1]])
            for number, row in enumerate(examples)
        ]
        return Evaluation(dict(output.metrics), records)

    # ------------------------------------------------------------------ inference

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """The picked choice of each row, with every choice's score (`--text` holds the row as a JSON object)."""
        import torch

        from llmkit.tasks.mechanisms.choice_scoring import ChoiceCollator, choice_scores

        rows = [input_row(row, number) for number, row in enumerate(rows, 1)]
        encode, collate = self.encoder(recipe, tokenizer), ChoiceCollator(tokenizer)
        results: list[dict[str, Any]] = []
        model.eval()
        for first in range(0, len(rows), 16):
            chunk = rows[first : first + 16]
            columns = {key: [row.get(key, "") for row in chunk] for key in ("context", "question", "choices")}
            features = encode(columns)
            batch = collate([{key: values[i] for key, values in features.items()} for i in range(len(chunk))])
            with torch.no_grad():
                scores = choice_scores(model, {k: v.to(model.device) for k, v in batch.items()}, self.decoder)
            for row, row_scores in zip(chunk, scores.tolist(), strict=True):
                results.append(record(row, row_scores[: len(row["choices"])], with_reference=False))
        return results


# ---------------------------------------------------------------------------- features


def encoder_features(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Callable[[dict[str, list]], dict]:
    """Each choice as the pair (context, question + " " + choice), as run_swag builds SWAG's (sent1, sent2 + ending)."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        firsts, seconds, sizes = [], [], []
        questions = batch.get("question") or [""] * len(batch["context"])
        for context, question, choices in zip(batch["context"], questions, batch["choices"], strict=True):
            firsts += [str(context)] * len(choices)
            seconds += [f"{question} {choice}" if question else str(choice) for choice in choices]
            sizes.append(len(choices))
        encoded = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
        features = {key: regroup(values, sizes) for key, values in encoded.items()}
        if "label" in batch:
            features["labels"] = [int(label) for label in batch["label"]]
        return features

    return encode


def decoder_features(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Callable[[dict[str, list]], dict]:
    """Each choice as `prompt + " " + choice`, the choice tokens marked; the prompt is cut from its start (the
    words next to the choice matter most), the choice only beyond `max_length` - 1."""
    from llmkit.tasks.mechanisms.prompting import special_affixes

    head, _ = special_affixes(tokenizer)

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        questions = batch.get("question") or [""] * len(batch["context"])
        prompts = ids([f"{c} {q}" if q else str(c) for c, q in zip(batch["context"], questions, strict=True)])
        sizes = [len(choices) for choices in batch["choices"]]
        endings = ids([f" {str(choice).strip()}" for choices in batch["choices"] for choice in choices])
        inputs, marks, owner = [], [], [p for p, size in enumerate(sizes) for _ in range(size)]
        for number, ending in zip(owner, endings, strict=True):
            ending = ending[: max_length - len(head) - 1]
            prompt = head + prompts[number][max(len(prompts[number]) - (max_length - len(head) - len(ending)), 0) :]
            inputs.append(prompt + ending)
            marks.append([0] * len(prompt) + [1] * len(ending))
        features = {
            "input_ids": regroup(inputs, sizes),
            "attention_mask": regroup([[1] * len(seq) for seq in inputs], sizes),
            "choice_tokens": regroup(marks, sizes),
        }
        if "label" in batch:
            features["labels"] = [int(label) for label in batch["label"]]
        return features

    return encode


def regroup(values: list[Any], sizes: list[int]) -> list[list[Any]]:
    """A flat list back into one list per row."""
    grouped, start = [], 0
    for size in sizes:
        grouped.append(values[start : start + size])
        start += size
    return grouped


# ---------------------------------------------------------------------------- checks and records


def check_rows(dataset: Dataset, split: str, columns: dict[str, str | list[str]]) -> None:
    """Text where text belongs, at least one non-empty choice per row, and a label that indexes one of them."""
    require_nonempty_text(dataset, "context", split)
    if "question" in dataset.column_names:
        require_nonempty_text(dataset, "question", split)
    choices_column = named(columns.get("choices", "choices"))
    label_column = named(columns.get("label", "label"))
    labels = dataset["label"][:] if "label" in dataset.column_names else [None] * len(dataset)
    for index, (choices, label) in enumerate(zip(dataset["choices"][:], labels, strict=True)):
        if not isinstance(choices, list) or not choices:
            raise LlmkitError(f"data column `{choices_column}` (role `choices`) is empty in {split} row {index}")
        if len(choices) < 2:
            raise LlmkitError(
                f"data column `{choices_column}` (role `choices`): {split} row {index} has one choice; a question "
                "needs at least two to choose from"
            )
        blank = [number for number, choice in enumerate(choices) if not isinstance(choice, str) or not choice.strip()]
        if blank:
            raise LlmkitError(
                f"data column `{choices_column}` (role `choices`): choice {blank[0]} of {split} row {index} is empty"
            )
        if label is None and "label" not in dataset.column_names:
            continue
        if isinstance(label, float) and label.is_integer():
            label = int(label)  # a column with one fractional (wrong) value reads as floats: find that row
        if isinstance(label, bool) or not isinstance(label, int):
            raise LlmkitError(
                f"data column `{label_column}` (role `label`) must hold the index of the right choice (an integer), "
                f"but {split} row {index} has {label!r}"
            )
        if not 0 <= label < len(choices):
            raise LlmkitError(
                f"data column `{label_column}` (role `label`): {split} row {index} has label {label}, but the row "
                f"has {len(choices)} choices (indices 0..{len(choices) - 1})"
            )


def named(column: str | list[str]) -> str:
    return ", ".join(column) if isinstance(column, list) else column


def input_row(row: dict[str, Any], number: int) -> dict[str, Any]:
    """A `predict` input as roles: a row with `context` and `choices`, or `--text` holding one as JSON."""
    if "context" not in row and isinstance(row.get("text"), str):
        try:
            parsed = json.loads(row["text"])
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise LlmkitError(
                f'predict input {number}: --text must be a JSON object such as {{"context": "...", "choices": '
                '["...", "..."]}'
            )
        row = parsed
    if not isinstance(row.get("context"), str) or not row["context"].strip():
        raise LlmkitError(f"predict input {number} has no `context` text (fields: {', '.join(row) or 'none'})")
    choices = row.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise LlmkitError(f"predict input {number}: `choices` must be a non-empty list of texts, got {choices!r}")
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        raise LlmkitError(f"predict input {number}: `question` must be text, got {question!r}")
    return row


def record(row: dict[str, Any], scores: list[float], with_reference: bool = True) -> dict[str, Any]:
    """The inputs, the picked index (`label`) and text (`choice`), every score, and the gold index (`reference`)."""
    best = max(range(len(scores)), key=scores.__getitem__)
    result: dict[str, Any] = {"context": row["context"]}
    if row.get("question"):
        result["question"] = row["question"]
    result.update(label=best, choice=row["choices"][best], choices=list(row["choices"]))
    result["scores"] = [round(score, 5) for score in scores]
    if with_reference and row.get("label") is not None:
        result["reference"] = int(row["label"])
    return result


TASK = MultipleChoice()
