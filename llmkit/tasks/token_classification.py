"""Token classification: one label per word (named entities, part of speech, chunks, semantic roles).

Rows hold `tokens` (a list of words) and `tags` (one label per word: strings, or integers named by a dataset's
ClassLabel), read from JSON / JSON lines or from CoNLL column files (`token ... label` a line, a blank line
between sentences). As in Hugging Face's `run_ner.py`: the words go to the tokenizer pre-split, the first
sub-token of each word carries its label and the others are ignored (`token_classification.label_all_tokens`
labels them too); metrics are seqeval's entity-level precision / recall / F1 and the tag accuracy, over words.
The tag names are saved in the config (`id2label`); a trained checkpoint keeps its own. Evaluation keeps only
the arg-max tag of each token, never the logits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from llmkit.errors import LlmkitError
from llmkit.section import Section
from llmkit.tasks.base import Evaluation, Prepared, Task, tokenize
from llmkit.tasks.mechanisms.labels import (
    check_label_sets,
    checkpoint_labels,
    label_config,
    label_count_notes,
    label_ids,
    value_kind,
)
from llmkit.tasks.mechanisms.marking import learned, real_positions
from llmkit.tasks.mechanisms.tagging import (
    aligned_labels,
    b_to_i_ids,
    entities,
    is_bio,
    joined_offsets,
    prepare_for_words,
    read_conll,
    seqeval_scores,
    split_words,
    word_groups,
    word_starts,
)

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe


class TokenClassificationOptions(Section):
    """`token_classification:` in a recipe."""

    label_all_tokens: bool = Field(
        False, description="Label every sub-token of a word (a B-X tag continues as I-X), not only the first."
    )


class TokenClassification(Task):
    name = "token_classification"
    roles = ("tokens", "tags")
    role_kinds: ClassVar[dict[str, str]] = {"tokens": "tokens", "tags": "tags"}
    target_roles = ("tags",)
    auto_class_name = "AutoModelForTokenClassification"
    mapping_name = "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"
    needs = "a model with a token-classification head (BERT family, GPT-2, ...)"
    options_class = TokenClassificationOptions
    #: the head's loss is a mean over the labelled sub-tokens of the batch
    loss_is_token_mean = True

    def __init__(self, checkpoint_labels: dict[str, int] | None = None) -> None:
        #: tag → id of a checkpoint trained for tagging (None: the tags come from the data)
        self.checkpoint_labels = checkpoint_labels
        #: tag → id and id → tag of this run (set by config_overrides)
        self.label2id: dict[str, int] = {}
        self.id2label: dict[int, str] = {}
        #: first sub-token position of each word of each eval row (set by preprocess)
        self.eval_starts: list[list[int | None]] | None = None

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        return TokenClassification(checkpoint_labels(config))

    def read_file(self, path: Path) -> list[dict[str, Any]] | None:
        return read_conll(path)

    # ------------------------------------------------------------------ tags

    def config_overrides(self, recipe: Recipe, raw: DatasetDict) -> dict[str, Any]:
        """The tag set, read from the data (or kept from the checkpoint), as config fields."""
        column = recipe.data.columns.get("tags", "tags")
        for split, dataset in raw.items():
            check_rows(dataset, split, recipe)
        values = {split: [tag for row in dataset["tags"] for tag in row] for split, dataset in raw.items()}
        value_kind(values, column, allow_float=False)
        if "train" in raw:
            check_label_sets(values, column, "tagging needs at least two tags")
        distinct = {tag for split_values in values.values() for tag in split_values}
        inner = getattr(next(iter(raw.values())).features["tags"], "feature", None)
        ids = label_ids(
            distinct, column, self.checkpoint_labels, training="train" in raw, names=getattr(inner, "names", None)
        )
        self.label2id = ids
        self.id2label = {index: name for name, index in ids.items()}
        return label_config(ids)

    def tag_id(self, tag: str | int) -> int:
        return self.label2id[tag] if isinstance(tag, str) else int(tag)

    def tag_name(self, tag: str | int) -> str:
        return tag if isinstance(tag, str) else self.id2label.get(int(tag), str(tag))

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        prepare_for_words(tokenizer)
        label_all, b_to_i, tag_id = recipe.options.label_all_tokens, b_to_i_ids(self.label2id), self.tag_id

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = encode_words(tokenizer, batch["tokens"], recipe.data.max_length)
            encoded["labels"] = [
                aligned_labels(encoded.word_ids(i), [tag_id(tag) for tag in tags], label_all, b_to_i)
                for i, tags in enumerate(batch["tags"])
            ]
            return dict(encoded)

        features = {split: tokenize(dataset, encode, recipe, f"Tokenizing {split}") for split, dataset in raw.items()}
        if "eval" in raw:
            self.eval_starts = starts_of(tokenizer, list(raw["eval"]["tokens"]), recipe.data.max_length)
        return Prepared(features.get("train"), features.get("eval"), raw.get("eval"))

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        """Pads each batch to its longest row; labels are padded with -100 (no loss)."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        """The sentence word by word, each word's tag after it inside [[ ]] (words tagged `O` are left plain)."""
        special = set(tokenizer.all_special_ids)
        kept = [p for p in real_positions(batch, index) if batch["input_ids"][index][p] not in special]
        ids = [batch["input_ids"][index][p] for p in kept]
        labels = [batch["labels"][index][p] for p in kept]
        names = getattr(config, "id2label", None) or {}
        words = []
        for group in word_groups(tokenizer, ids):
            labelled = [labels[p] for p in group if labels[p] != -100]
            tag = names.get(int(labelled[0]), str(labelled[0])) if labelled else None
            words.append((tokenizer.decode([ids[p] for p in group]).strip(), tag))
        return " ".join(word + (learned(tag) if tag not in (None, "O") else "") for word, tag in words)

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        """The tag set with its word counts per split; how long sentences and sub-tokens are handled."""
        counts = {
            split: Counter(self.tag_name(t) for row in dataset["tags"] for t in row) for split, dataset in raw.items()
        }
        how = (
            "every sub-token of a word carries its tag"
            if recipe.options.label_all_tokens
            else ("the first sub-token of each word carries its tag (token_classification.label_all_tokens: false)")
        )
        return [
            f"sentences longer than {recipe.data.max_length} tokens are cut: their last words get no tag",
            how,
            *label_count_notes(counts, "words"),
        ]

    # ------------------------------------------------------------------ evaluation

    def preprocess_logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        return top_tag

    def compute_metrics(self, recipe: Recipe) -> Callable[[Any], dict[str, float]]:
        return self.scores

    def scores(self, prediction: Any) -> dict[str, float]:
        """seqeval over the words of the eval rows (the first sub-token of each), as `run_ner.py` scores."""
        predicted, gold = prediction.predictions, prediction.label_ids
        starts = self.eval_starts if self.eval_starts is not None and len(self.eval_starts) == len(gold) else None
        references, predictions = [], []
        for row in range(len(gold)):
            if starts is not None:
                positions = [p for p in starts[row] if p is not None]
            else:  # rows this task did not prepare: every labelled position, as run_ner does
                positions = [p for p, label in enumerate(gold[row]) if label != -100]
            references.append([self.id2label[int(gold[row][p])] for p in positions])
            predictions.append([self.id2label.get(int(predicted[row][p]), "O") for p in positions])
        return seqeval_scores(references, predictions)

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Loss and seqeval scores in one pass, and one record per sentence: its words, the predicted tag of
        each (null for a word cut off by `data.max_length`; such words are not scored) and the gold tags."""
        assert prepared.eval is not None and prepared.eval_examples is not None and self.eval_starts is not None
        output = trainer.predict(prepared.eval, metric_key_prefix="eval")
        examples = prepared.eval_examples
        records = []
        for row, (words, gold) in enumerate(zip(examples["tokens"], examples["tags"], strict=True)):
            best = output.predictions[row]
            tags = [None if p is None else self.id2label.get(int(best[p]), "O") for p in self.eval_starts[row]]
            records.append({"tokens": list(words), "tags": tags, "reference": [self.tag_name(t) for t in gold]})
        return Evaluation(dict(output.metrics), records)

    # ------------------------------------------------------------------ inference

    def export_head(self) -> Any:
        """`llmkit export`: the per-token tag scores, compared on the tokens the attention mask keeps."""
        from llmkit.export.heads import Head

        return Head(("logits",), per_token=True, label_key="labels")

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """Tags of each word and, for BIO tags, the entities with their character offsets in the input text
        (for a `tokens` input: in its words joined by single spaces)."""
        import torch

        prepare_for_words(tokenizer)
        inputs = [predict_input(row, number) for number, row in enumerate(rows, 1)]
        names = {int(k): str(v) for k, v in model.config.id2label.items()}
        with_entities = is_bio(list(names.values()))
        results = []
        model.eval()
        for first in range(0, len(inputs), 32):
            chunk = inputs[first : first + 32]
            words = [[word for word, _, _ in spans] for _, spans in chunk]
            encoded = encode_words(tokenizer, words, recipe.data.max_length, padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model(**{key: value.to(model.device) for key, value in encoded.items()}).logits
            best = logits.argmax(-1).tolist()
            for i, (text, spans) in enumerate(chunk):
                starts = word_starts(encoded.word_ids(i), len(spans))
                tags = [None if p is None else names.get(best[i][p], str(best[i][p])) for p in starts]
                record: dict[str, Any] = {"tokens": words[i], "tags": tags}
                untagged = sum(tag is None for tag in tags)
                if untagged:
                    record["note"] = (
                        f"the last {untagged} word(s) lie past data.max_length ({recipe.data.max_length} tokens) "
                        "and get no tag: split the text"
                    )
                if with_entities:
                    record["entities"] = entities(tags, spans, text)
                results.append(record)
        return results


def encode_words(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[Sequence[str]], max_length: int, **options: Any
) -> Any:
    """Pre-split words → sub-tokens that remember their word (`word_ids`), cut to `max_length`."""
    return tokenizer(
        [list(row) for row in words], is_split_into_words=True, truncation=True, max_length=max_length, **options
    )


def starts_of(tokenizer: PreTrainedTokenizerBase, words: list[list[str]], max_length: int) -> list[list[int | None]]:
    """The first sub-token position of each word of each row (None: cut off)."""
    encoded = encode_words(tokenizer, words, max_length)
    return [word_starts(encoded.word_ids(i), len(row)) for i, row in enumerate(words)]


def check_rows(dataset: Dataset, split: str, recipe: Recipe) -> None:
    """Each row has words and exactly one tag per word; a row that does not would fail deep in alignment."""
    columns = recipe.data.columns
    words_column, tags_column = columns.get("tokens", "tokens"), columns.get("tags", "tags")
    for row, (words, tags) in enumerate(zip(dataset["tokens"], dataset["tags"], strict=True)):
        if not words:
            raise LlmkitError(f"data column `{words_column}` (role `tokens`): {split} row {row} has no tokens")
        if tags is None:
            raise LlmkitError(f"data column `{tags_column}` is empty in {split} row {row}")
        if len(tags) != len(words):
            raise LlmkitError(
                f"data column `{tags_column}` (role `tags`): {split} row {row} has {len(tags)} tags for "
                f"{len(words)} tokens (column `{words_column}`)"
            )
        if None in words:
            raise LlmkitError(f"data column `{words_column}` (role `tokens`): {split} row {row} has an empty token")
        if None in tags:
            raise LlmkitError(f"data column `{tags_column}` (role `tags`): {split} row {row} has an empty tag")


def predict_input(row: dict[str, Any], number: int) -> tuple[str, list[tuple[str, int, int]]]:
    """A `predict` row → (its text, its words with character offsets): `tokens` as given, or `text` split."""
    tokens = row.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise LlmkitError(f"predict input {number}: `tokens` must be a non-empty list of words")
        return " ".join(tokens), joined_offsets(tokens)
    text = row.get("text")
    if not isinstance(text, str):
        fields = ", ".join(row) or "none"
        raise LlmkitError(
            f"predict input {number} has no `tokens` (a list of words) or `text` field (fields: {fields})"
        )
    spans = split_words(text)
    if not spans:
        raise LlmkitError(f"predict input {number}: `text` holds no words")
    return text, spans


def top_tag(logits: Any, labels: Any) -> Any:
    """Per batch, keep the arg-max tag id of each token instead of its scores."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


TASK = TokenClassification()
