"""The Task object: everything that differs between tasks, behind one interface.

A task bundles its model head, its column roles, its preprocessing, its collator and its evaluation.
The pipeline calls these hooks and never asks which task it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe
    from llmkit.section import Section


@dataclass
class Prepared:
    """Model-ready features, plus the raw eval rows that post-processing needs (QA spans, references)."""

    train: Dataset | None
    eval: Dataset | None
    eval_examples: Dataset | None = None


@dataclass
class Evaluation:
    """Metrics (names as in the Hugging Face examples) and, for generation tasks, one record per example."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]] | None = None


class Task:
    """Default behaviour shared by all tasks; subclasses override what differs."""

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    optional_roles: ClassVar[tuple[str, ...]] = ()
    #: what each role's column holds (text unless said otherwise): checked when the data loads, see `data.KINDS`
    role_kinds: ClassVar[dict[str, str]] = {}
    #: the values `data.packing` may take for this task (examples packed into rows need the task to unpack
    #: what it predicts: language-model blocks, one label per example, prompt → target tokens)
    packing_choices: ClassVar[tuple[bool | str, ...]] = (False,)
    #: the task's own recipe section (`<task name>:`), a `Section` subclass; None: the task has no options
    options_class: ClassVar[type[Section] | None] = None
    #: the training commands that run this task (`pretrain` is for the language-modelling objectives)
    commands: ClassVar[tuple[str, ...]] = ("finetune",)
    #: roles the model learns to produce: not needed as `predict` inputs (a given one is the `reference`)
    target_roles: ClassVar[tuple[str, ...]] = ()
    auto_class_name: ClassVar[str]
    #: the transformers mapping that says which architectures have this head
    mapping_name: ClassVar[str]
    #: what the model needs to be for this task, in words, for error messages
    needs: ClassVar[str]
    #: the loss is a mean over target tokens (language modelling, prompt → target), so many processes and
    #: accumulation steps must divide by the token count of all of them together, as one process over the
    #: whole batch would. The default, a mean over examples (classification, spans), is right for any new task
    #: until it says otherwise: each process takes its own batch mean and the gradients are averaged.
    loss_is_token_mean: ClassVar[bool] = False
    #: the task can train from a stream (`data.streaming`): its features are made row by row as they are read
    #: (language-model blocks); a task that needs all its rows at once (label sets, lengths) reads into memory
    streams: ClassVar[bool] = False

    # ------------------------------------------------------------------ model

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        """The task object for this model: a task whose method depends on the architecture (decoder-only vs
        encoder-decoder summarization, extractive vs generative QA) returns a variant; most return themselves."""
        return self

    def check_packing(self, recipe: Recipe) -> None:
        """`data.packing` set to what this task cannot do is refused, not ignored."""
        packing = recipe.data.packing
        if packing is not None and packing not in self.packing_choices:
            allowed = " or ".join(str(choice).lower() for choice in self.packing_choices)
            raise LlmkitError(
                f"recipe field `data.packing`: task `{self.name}` takes {allowed} (got {str(packing).lower()})"
            )

    def check_streaming(self, recipe: Recipe) -> None:
        """`data.streaming` where the task or the rest of the recipe needs the whole training set is refused."""
        if not recipe.data.streaming:
            return
        if not self.streams:
            from llmkit.tasks import TASKS

            streamed = ", ".join(name for name, task in TASKS.items() if task.streams)
            raise LlmkitError(
                f"recipe field `data.streaming`: task `{self.name}` reads its data into memory; streaming is for "
                f"the tasks whose features are made as they are read ({streamed})"
            )
        if recipe.training.max_steps <= 0:
            raise LlmkitError(
                "recipe field `training.max_steps`: `data.streaming: true` needs a step count (a stream has no "
                "length to count epochs by)"
            )
        if recipe.data.validation_split is not None:
            raise LlmkitError(
                "recipe field `data.validation_split`: holding rows out needs the whole training set in memory; "
                "with `data.streaming: true` set `data.eval` (a file or a hub split) instead"
            )

    def check_architecture(self, config: PretrainedConfig, recipe: Recipe) -> None:
        """Reject a model that cannot do this task, before any weights are loaded."""
        from llmkit.models import supports

        if not supports(config, self.mapping_name):
            raise LlmkitError(
                f"task `{self.name}` needs {self.needs}; model type `{config.model_type}` "
                f"({recipe.model.name_or_path or 'model.from_config'}) has no {self.auto_class_name} head"
            )

    def auto_class(self) -> Any:
        """The transformers Auto class of this task's model (`auto_class_name`)."""
        import transformers

        return getattr(transformers, self.auto_class_name)

    def config_overrides(self, recipe: Recipe, raw: DatasetDict) -> dict[str, Any]:
        """Config values that depend on the data (e.g. the label set); saved with the model."""
        return {}

    def kind(self, role: str) -> str:
        return self.role_kinds.get(role, "text")

    def text_roles(self) -> tuple[str, ...]:
        """Columns whose text a tokenizer trained for this task learns from (and `check` measures)."""
        return tuple(role for role in (*self.roles, *self.optional_roles) if self.kind(role) == "text")

    def training_texts(self, row: dict[str, Any]) -> Iterator[str]:
        """The text of one row a tokenizer trained for this task learns from: text roles as they are, a list of
        words joined by spaces, each of a list of texts, each message's content."""
        for role in (*self.roles, *self.optional_roles):
            value, kind = row.get(role), self.kind(role)
            if isinstance(value, str) and kind in ("text", "messages"):
                yield value
            elif isinstance(value, list) and kind == "tokens":
                yield " ".join(str(word) for word in value)
            elif isinstance(value, list) and kind in ("choices", "messages"):
                for item in value:
                    content = item.get("content") if isinstance(item, dict) else item
                    if isinstance(content, str):
                        yield content

    def read_file(self, path: Path) -> list[dict[str, Any]] | None:
        """Rows of a local file in a layout only this task reads (nested SQuAD JSON, CoNLL columns); None:
        the file is read as any other (csv, json lines, ...)."""
        return None

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        raise NotImplementedError

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        """Batches for the model (`model`, when given, is the one being trained; `check` passes none)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    # ------------------------------------------------------------------ training and evaluation

    def trainer_class(self) -> type[Trainer]:
        from transformers import Trainer

        return Trainer

    def compute_metrics(self, recipe: Recipe) -> Callable[[Any], dict[str, float]] | None:
        return None

    def preprocess_logits_for_metrics(self) -> Callable[[Any, Any], Any] | None:
        return None

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Default: the Trainer's own evaluation (loss + compute_metrics)."""
        metrics = trainer.evaluate(prepared.eval)
        return Evaluation(with_perplexity(metrics))

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        """One collated training example as `check` shows it, with what the model learns inside [[ ]]. The
        default reads `labels`: token-level labels mark their tokens, a separate target sequence follows."""
        from llmkit.tasks.mechanisms.marking import LEARNED_CLOSE, LEARNED_OPEN, marked, real_positions

        kept = real_positions(batch, index)
        ids = [batch["input_ids"][index][p] for p in kept]
        labels = batch.get("labels", [None] * (index + 1))[index]
        if isinstance(labels, list) and len(labels) == len(batch["input_ids"][index]):
            labels = [labels[p] for p in kept]
            shown = [label if label != -100 else token for token, label in zip(ids, labels, strict=True)]
            return marked(ids, shown, [label != -100 for label in labels], tokenizer)
        if isinstance(labels, list):  # encoder-decoder: the target is a separate sequence
            target = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=True)
            return f"{tokenizer.decode(ids)}  → {LEARNED_OPEN}{target}{LEARNED_CLOSE}"
        return tokenizer.decode(ids)

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        """What `llmkit check` should say about this task's data beyond lengths and examples."""
        return [f"rows longer than {recipe.data.max_length} tokens are cut to fit"]

    # ------------------------------------------------------------------ inference

    def export_head(self) -> Any:
        """What `llmkit export` writes as an ONNX graph (an `llmkit.export.heads.Head`); None: not exportable."""
        return None

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        raise LlmkitError(f"`llmkit predict` does not support task `{self.name}`")


class TokenMeanCrossEntropy:
    """Cross-entropy summed over the labelled tokens, divided by the Trainer's `num_items_in_batch`: the
    labelled tokens of the whole batch, over every process and accumulation step.

    For models whose own loss is a mean over their local batch and ignores that count (BERT's masked-LM head,
    T5's and BART's decoders): a mean of per-process means weighs each token by its process's share, and the
    Trainer, which expects the count to have been used, multiplies it by the number of processes and does not
    divide it by the accumulation steps. Used as the Trainer's `compute_loss_func`, which
    takes the labels out of the inputs, so the model returns logits only.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch.nn.functional as F

        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
        labels = labels.to(logits.device)
        total = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        if num_items_in_batch is None:
            return total / labels.ne(-100).sum().clamp(min=1)
        if hasattr(num_items_in_batch, "to"):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


def loss_counts_tokens(model: Any) -> bool:
    """Whether a model's own loss divides by the Trainer's `num_items_in_batch`: transformers' losses that do
    go through `self.loss_function` (GPT-2, Llama); those written as `CrossEntropyLoss()` take a local mean."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return False
    return "self.loss_function(" in source


def with_perplexity(metrics: dict[str, float]) -> dict[str, float]:
    """Add `perplexity = exp(eval_loss)` (inf instead of an overflow)."""
    if "eval_loss" in metrics:
        loss = metrics["eval_loss"]
        metrics["perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return metrics


def tokenize(
    dataset: Dataset,
    function: Callable[[dict[str, list]], dict[str, list]],
    recipe: Recipe,
    description: str,
    remove_columns: list[str] | None = None,
) -> Dataset:
    """Batched map of a tokenizing function; `datasets` caches the result by fingerprint.
    Small datasets (seconds of work) show no progress bar."""
    from llmkit.data import quiet_progress

    with quiet_progress(len(dataset) < 20_000):
        return dataset.map(
            function,
            batched=True,
            num_proc=recipe.data.num_proc,
            remove_columns=dataset.column_names if remove_columns is None else remove_columns,
            desc=description,
        )


def require_nonempty_text(dataset: Dataset, role: str, split: str) -> None:
    """Rows whose text is missing would silently vanish; name the column and row instead."""
    for index, value in enumerate(dataset[role][:]):
        if value is None:
            raise LlmkitError(f"data column `{role}` is empty in {split} row {index}")
