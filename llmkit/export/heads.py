"""What a model head exports: the graph's outputs and how PyTorch and ONNX Runtime are compared on them.

The task says which head it has through its `export_head()` hook (None: not exportable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.errors import LlmkitError


class ParityFailed(LlmkitError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance: the export is not written."""

    exit_code = 1


class ExportFailed(LlmkitError):
    """The exporter could not turn the model into a graph (a limitation, not the user's input)."""

    exit_code = 1


@dataclass(frozen=True)
class Head:
    """How a model head is exported and checked."""

    #: the model output fields that become the graph's outputs
    outputs: tuple[str, ...]
    #: the graph takes `position_ids` (decoders: left-padded generation needs them)
    position_ids: bool = False
    #: outputs are per token: compare only the tokens the attention mask keeps
    per_token: bool = False
    #: the parity batches hold gold labels for the first output (accuracy of both runtimes)
    label_key: str | None = None
    #: predict generates text through the graph
    generates: bool = False


def head_of(task: Any, auto_class_name: str | None = None) -> Head:
    """The head a task's model exports (the task's `export_head()`); a one-line error when it has none."""
    head = task.export_head()
    if head is None:
        raise LlmkitError(
            f"`llmkit export` does not support task `{task.name}` ({auto_class_name or task.auto_class_name}); "
            "it exports classification, extractive QA, token-classification and decoder (generating) models"
        )
    return head
