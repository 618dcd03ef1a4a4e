"""Sequence classification: a text (or a text pair) → one of N labels, or a score (regression).

Labels may be integers, strings (mapped to ids; the names are saved in the model's config as
`id2label`/`label2id`, so `predict` prints them) or floats (regression, one output). A checkpoint that
already knows its labels (a trained run folder being evaluated) keeps its own mapping. GPT-2 works too:
its pad token is set and `config.pad_token_id` tells its head which token is the last real one.
Evaluation keeps only the arg-max of each row, never the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from llmkit.errors import LlmkitError
from llmkit.tasks.base import Evaluation, Prepared, Task, require_nonempty_text, tokenize
from llmkit.tasks.mechanisms.labels import (
    check_label_sets,
    checkpoint_labels,
    label_config,
    label_count_notes,
    label_ids,
    value_kind,
)
from llmkit.tasks.mechanisms.marking import learned, real_positions

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe


class Classification(Task):
    name = "classification"
    roles = ("text", "label")
    optional_roles = ("text_pair",)
    role_kinds: ClassVar[dict[str, str]] = {"label": "label"}
    packing_choices = (True, False)
    target_roles = ("label",)
    auto_class_name = "AutoModelForSequenceClassification"
    mapping_name = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"
    needs = "a model with a sequence-classification head (BERT family, GPT-2, ...)"

    def __init__(self, checkpoint_labels: dict[str, int] | None = None, packing: bool = False) -> None:
        #: label → id of a checkpoint trained for classification (None: the labels come from the data)
        self.checkpoint_labels = checkpoint_labels
        #: `data.packing`: several examples per row, each attending only to itself (padding_free.py)
        self.packing = packing
        #: string label → id for this run's data (set by config_overrides)
        self.label_ids: dict[str, int] | None = None

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        from llmkit.tasks.mechanisms.padding_free import fine_tuning_packs

        return Classification(checkpoint_labels(config), fine_tuning_packs(recipe, self.name))

    # ------------------------------------------------------------------ labels

    def config_overrides(self, recipe: Recipe, raw: DatasetDict) -> dict[str, Any]:
        """The label set, read from the data (or kept from the checkpoint), as config fields."""
        column = recipe.data.columns.get("label", "label")
        values = {split: dataset["label"] for split, dataset in raw.items()}
        if value_kind(values, column) == "float":
            return {"id2label": {0: "score"}, "label2id": {"score": 0}, "problem_type": "regression"}
        if "train" in raw:
            check_label_sets(
                values, column, "classification needs at least two (a column of floats selects regression)"
            )
        distinct = {value for split_values in values.values() for value in split_values}
        names = getattr(next(iter(raw.values())).features["label"], "names", None)
        ids = label_ids(distinct, column, self.checkpoint_labels, training="train" in raw, names=names)
        self.label_ids = ids if all(isinstance(v, str) for v in distinct) else None
        return label_config(ids, "single_label_classification")

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        label_ids = self.label_ids

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                batch["text"], batch.get("text_pair"), truncation=True, max_length=recipe.data.max_length
            )
            labels = batch["label"]
            encoded["labels"] = [label_ids[v] for v in labels] if label_ids is not None else labels
            return dict(encoded)

        features = {}
        for split, dataset in raw.items():
            require_nonempty_text(dataset, "text", split)
            if "text_pair" in dataset.column_names:
                require_nonempty_text(dataset, "text_pair", split)
            features[split] = tokenize(dataset, encode, recipe, f"Tokenizing {split}")
        return Prepared(features.get("train"), features.get("eval"), raw.get("eval"))

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        """The label set with counts per split, and labels that only one split has."""
        from collections import Counter

        notes = super().check_notes(recipe, raw)
        if value_kind({s: d["label"] for s, d in raw.items()}, recipe.data.columns.get("label", "label")) == "float":
            return [*notes, "labels are numbers with decimals: regression (one output, mean squared error)"]
        counts = {split: Counter(dataset["label"]) for split, dataset in raw.items()}
        notes += label_count_notes(counts, "rows")
        if self.packing:
            notes.append("packing: each batch's examples share rows, each attending only to itself (no padding)")
        return notes

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        """Padded to each batch's longest row (DataCollatorWithPadding), or packed (`data.packing: true`)."""
        if not self.packing:
            return super().collator(recipe, tokenizer, model)
        from llmkit.models import is_decoder_only
        from llmkit.tasks.mechanisms.padding_free import ExamplePacker, head_kind, mask_style

        if model is not None:
            head_kind(model.get_base_model() if hasattr(model, "get_base_model") else model)
        causal = model is not None and is_decoder_only(model.config)
        return ExamplePacker(tokenizer, causal=causal, example_labels=True, style=mask_style(model))

    def trainer_class(self) -> type[Trainer]:
        from transformers import Trainer

        from llmkit.tasks.mechanisms.padding_free import padding_free_trainer

        return padding_free_trainer(Trainer) if self.packing else Trainer

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        if "packed_examples" in batch:
            from llmkit.tasks.mechanisms.padding_free import unpacked_view

            batch, index = unpacked_view(batch, index), 0
        label = batch["labels"][index]
        name = (getattr(config, "id2label", None) or {}).get(int(label), label) if isinstance(label, int) else label
        ids = [batch["input_ids"][index][p] for p in real_positions(batch, index)]
        return f"{tokenizer.decode(ids)}  → label {learned(str(name))}"

    # ------------------------------------------------------------------ evaluation

    def preprocess_logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        return top_class

    def compute_metrics(self, recipe: Recipe) -> Callable[[Any], dict[str, float]]:
        return class_metrics

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        return Evaluation(trainer.evaluate(prepared.eval))

    def export_head(self) -> Any:
        """`llmkit export`: the class logits, scored against the gold labels by both runtimes."""
        from llmkit.export.heads import Head

        return Head(("logits",), label_key="labels")

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """Label and probability (or the score, for regression) of each text."""
        import torch

        for number, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise LlmkitError(f"predict input {number} has no `text` field (fields: {', '.join(row) or 'none'})")
        results = []
        model.eval()
        for first in range(0, len(rows), 32):
            chunk = rows[first : first + 32]
            texts = [row["text"] for row in chunk]
            pairs = [str(row["text_pair"]) for row in chunk] if all("text_pair" in row for row in chunk) else None
            encoded = tokenizer(
                texts, pairs, truncation=True, max_length=recipe.data.max_length, padding=True, return_tensors="pt"
            ).to(model.device)
            with torch.no_grad():
                logits = model(**encoded).logits.float()
            for index, row in enumerate(chunk):
                record: dict[str, Any] = {"text": row.get("text")}
                if pairs is not None:
                    record["text_pair"] = row["text_pair"]
                if logits.shape[-1] == 1:
                    record["score"] = round(float(logits[index, 0]), 4)
                else:
                    probabilities = logits[index].softmax(-1)
                    best = int(probabilities.argmax())
                    record["label"] = model.config.id2label.get(best, str(best))
                    record["probability"] = round(float(probabilities[best]), 4)
                results.append(record)
        return results


def top_class(logits: Any, labels: Any) -> Any:
    """Per batch, reduce logits to what the metrics need (the class id, or the score for regression)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)


def class_metrics(prediction: Any) -> dict[str, float]:
    from llmkit.tasks.mechanisms.scores import classification_metrics, regression_metrics

    predictions, labels = prediction.predictions, prediction.label_ids
    if predictions.dtype.kind == "f":
        return regression_metrics(predictions.reshape(-1), labels.reshape(-1))
    return classification_metrics(predictions.reshape(-1), labels.reshape(-1))


TASK = Classification()
