"""Padding-free batches: several examples (or documents) in one row, each attending only to itself.

Fine-tuning examples are short and uneven, so a padded batch spends most of its compute on padding. With
`data.packing: true` the collator keeps the Trainer's batch (the same examples per step, in the same order)
but lays them out first-fit into as few rows as the batch's longest example allows, with

- a block-diagonal 4D attention mask (causal inside each block for decoders): what transformers passes to
  eager and SDPA attention as it is (`masking_utils` returns a 4D mask untouched), boolean for SDPA and
  additive (0 / dtype min) for eager, as transformers' own `sdpa_mask` and `eager_mask` make them;
- position ids (and token type ids) restarting at each example;
- token labels whose first position in each example is -100 (a decoder's shifted loss must not predict one
  example's first token from the previous example), or one label per example for classification.

Position ids alone do not isolate examples once an attention mask is given; the block mask does, so logits and
losses equal the padded ones (tests/test_padding_free.py). Classification picks each example's [CLS] (encoders)
or last token (decoders) from the packed rows and runs the model's own head on them, inside the model's
`forward` (so DDP's gradient hooks see one forward, as usual).

`data.packing: documents` (clm/mlm) applies the same mask to the documents inside a packed LM block.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import Recipe

#: attention implementations whose attention receives a 4D mask as given
MASKED_ATTENTION = ("eager", "sdpa")


def packing_mode(recipe: Recipe, default: bool) -> bool | str:
    """`data.packing` for this task: True, False or "documents"; unset means the task's default."""
    value = recipe.data.packing
    return default if value is None else value


def fine_tuning_packs(recipe: Recipe, task: str) -> bool:
    """Whether a fine-tuning task packs examples (`documents` only means something for clm/mlm)."""
    value = packing_mode(recipe, default=False)
    if value == "documents":
        raise LlmkitError(
            f"recipe field `data.packing`: `documents` is for clm/mlm blocks; task `{task}` takes true or false"
        )
    return bool(value)


def mask_style(model: PreTrainedModel | None) -> str:
    """How the 4D mask is written for this model: additive for eager attention, boolean otherwise (SDPA)."""
    if model is None:
        return "sdpa"
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in MASKED_ATTENTION:
        raise LlmkitError(
            f"recipe field `data.packing`: packed rows need attention `eager` or `sdpa` (a 4D block mask); "
            f"the model uses `{implementation}`: set model.attn_implementation: sdpa or data.packing: false"
        )
    return implementation


def block_mask(segments: Any, causal: bool, style: str) -> Any:
    """(rows, 1, L, L) mask letting a token see only tokens of its own segment (and, if causal, not later ones).
    Padding has its own segment (-1), so no row is fully masked (a fully masked row makes SDPA return NaN)."""
    import torch

    allowed = segments[:, :, None] == segments[:, None, :]
    if causal:
        length = segments.shape[1]
        allowed &= torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = allowed[:, None]
    if style == "eager":
        return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the first row it fits (first-fit decreasing)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


class ExamplePacker:
    """Collates a batch of tokenized examples into packed rows (see the module docstring).

    `example_labels`: one label per example (classification), kept in the batch's order; otherwise labels are
    per token and packed with their tokens. `causal`: decoder attention (and shifted labels) inside examples.
    The batch starts with `packed_spans` (row, start, length) per example: the Trainer sizes a batch by its
    first tensor, so eval losses are weighed by examples as without packing; the model's forward drops it.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, causal: bool, example_labels: bool, style: str = "sdpa"
    ) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.causal = causal
        self.example_labels = example_labels
        self.style = style

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        lengths = [len(feature["input_ids"]) for feature in features]
        rows = first_fit(lengths, max(lengths))
        shape = (len(rows), max(sum(lengths[i] for i in row) for row in rows))
        columns = {"input_ids": self.pad_id, **({} if self.example_labels else {"labels": -100})}
        if "token_type_ids" in features[0]:
            columns["token_type_ids"] = 0
        arrays = {name: np.full(shape, fill, dtype=np.int64) for name, fill in columns.items()}
        positions, segments = np.zeros(shape, dtype=np.int64), np.full(shape, -1, dtype=np.int64)
        spans = np.zeros((len(features), 3), dtype=np.int64)
        for row, members in enumerate(rows):
            sizes = [lengths[i] for i in members]
            used = sum(sizes)
            spans[members] = np.stack([np.full(len(members), row), np.cumsum([0, *sizes[:-1]]), sizes], axis=1)
            for name, array in arrays.items():
                array[row, :used] = [value for i in members for value in features[i][name]]
            positions[row, :used] = np.concatenate([np.arange(size) for size in sizes])
            segments[row, :used] = np.repeat(members, sizes)
        if "labels" in arrays and self.causal:
            arrays["labels"][spans[:, 0], spans[:, 1]] = -100
        batch: dict[str, Any] = {"packed_examples" if self.example_labels else "packed_spans": torch.from_numpy(spans)}
        batch["input_ids"] = torch.from_numpy(arrays.pop("input_ids"))
        batch["attention_mask"] = block_mask(torch.from_numpy(segments), self.causal, self.style)
        batch["position_ids"] = torch.from_numpy(positions)
        batch.update({name: torch.from_numpy(array) for name, array in arrays.items()})
        if self.example_labels:
            batch["labels"] = torch.as_tensor([feature["labels"] for feature in features])
        return batch


def unpacked_view(batch: dict[str, Any], index: int) -> dict[str, Any]:
    """Example `index` of a packed batch (lists, as `check` renders them) as a one-row padded batch."""
    spans = batch.get("packed_examples", batch.get("packed_spans"))
    row, start, length = spans[index]
    view = {"input_ids": [batch["input_ids"][row][start : start + length]], "attention_mask": [[1] * length]}
    labels = batch.get("labels")
    if labels is not None:
        per_token = "packed_spans" in batch
        view["labels"] = [labels[row][start : start + length]] if per_token else [labels[index]]
    return view


# --------------------------------------------------------------------------- documents in LM blocks


def document_starts(texts: list[str], lengths: list[int]) -> list[list[int]]:
    """Per token, 1 where a document starts. A row ending in a newline continues into the next one (lines of a
    text file), unless it is blank: a blank line ends a paragraph, speech or document."""
    starts = []
    continues = False
    for text, length in zip(texts, lengths, strict=True):
        starts.append(([0] if continues else [1]) + [0] * (length - 1))
        continues = text.endswith("\n") and bool(text.strip())
    return starts


def isolate_documents(batch: dict[str, Any], starts: Any, causal: bool, style: str) -> dict[str, Any]:
    """Add the block mask and per-document position ids to a batch of LM blocks; a decoder's label at each
    document start becomes -100 (a document alone has no prediction for its first token)."""
    import torch

    starts = torch.as_tensor(starts, dtype=torch.long)
    segments = starts.cumsum(dim=1)
    index = torch.arange(starts.shape[1]).expand_as(starts)
    first = torch.where(starts.bool(), index, torch.zeros_like(index)).cummax(dim=1).values
    batch["attention_mask"] = block_mask(segments, causal, style)
    batch["position_ids"] = index - first
    if causal and "labels" in batch:
        batch["labels"] = batch["labels"].masked_fill(starts.bool(), -100)
    return batch


# --------------------------------------------------------------------------- the model side


def head_kind(model: PreTrainedModel) -> str:
    """Which token feeds a sequence-classification head, by the head's shape: `score` on the last token
    (GPT-2, Llama), BERT's pooler + classifier on [CLS], or a RoBERTa-style head that reads position 0."""
    if hasattr(model, "score"):
        return "last"
    pooler = getattr(model.base_model, "pooler", None)
    if hasattr(model, "classifier") and hasattr(model, "dropout") and pooler is not None:
        return "pooler"
    if type(getattr(model, "classifier", None)).__name__.endswith("ClassificationHead"):
        return "first"
    raise LlmkitError(
        f"recipe field `data.packing`: packed classification supports BERT-, RoBERTa- and GPT-2-style heads; "
        f"model type `{model.config.model_type}` has another one: set data.packing: false"
    )


def packed_classification(model: PreTrainedModel, examples: Any, **inputs: Any) -> Any:
    """Logits (and loss, given labels) of each packed example: the base model once over the packed rows, then
    the model's own head on each example's summary token."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs.pop("labels", None)
    keys = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
    hidden = core.base_model(**{k: inputs[k] for k in keys if k in inputs}).last_hidden_state
    kind = head_kind(core)
    rows, starts, lengths = examples.unbind(dim=1)
    picked = hidden[rows, starts + lengths - 1] if kind == "last" else hidden[rows, starts]
    if kind == "last":
        logits = core.score(picked)
    elif kind == "pooler":
        logits = core.classifier(core.dropout(core.base_model.pooler(picked[:, None])))
    else:
        logits = core.classifier(picked[:, None])
    loss = None if labels is None else classification_loss(core.config, logits, labels)
    return SequenceClassifierOutput(loss=loss, logits=logits)


def classification_loss(config: Any, logits: Any, labels: Any) -> Any:
    """The loss transformers' sequence-classification heads compute, by `config.problem_type`."""
    import torch
    import torch.nn.functional as F

    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        labels = labels.to(logits.dtype)
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def accept_packed_batches(model: PreTrainedModel) -> None:
    """Let `model(**batch)` take packed batches: `packed_spans` is dropped, `packed_examples` runs the packed
    classification path; any other batch reaches the model's own forward unchanged."""
    if getattr(model, "_accepts_packed_batches", False):
        return
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("packed_spans", None)
        examples = kwargs.pop("packed_examples", None)
        if examples is None:
            return original(*args, **kwargs)
        return packed_classification(model, examples, **kwargs)

    model.forward = forward
    model._accepts_packed_batches = True


@functools.cache
def padding_free_trainer(base: type) -> type:
    """`base` (a Trainer class) whose model takes packed batches."""

    class PaddingFreeTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, model: Any = None, *args: Any, **kwargs: Any) -> None:
            if model is not None:
                accept_packed_batches(model)
            super().__init__(model, *args, **kwargs)

    PaddingFreeTrainer.__name__ = PaddingFreeTrainer.__qualname__ = f"PaddingFree{base.__name__}"
    return PaddingFreeTrainer
