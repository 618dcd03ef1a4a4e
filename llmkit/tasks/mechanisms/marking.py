"""Showing what a model learns: decoded tokens with the learned ones inside [[ ]] (used by `check`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LEARNED_OPEN, LEARNED_CLOSE = "[[", "]]"


def real_positions(batch: dict[str, Any], index: int) -> list[int]:
    """Positions of row `index` that are not padding."""
    ids = batch["input_ids"][index]
    real = batch["attention_mask"][index] if "attention_mask" in batch else [1] * len(ids)
    return [position for position, mask in enumerate(real) if mask]


def learned(text: str) -> str:
    return f"{LEARNED_OPEN}{text}{LEARNED_CLOSE}"


def marked(ids: list[int], shown: list[int], marks: list[bool], tokenizer: PreTrainedTokenizerBase) -> str:
    """Decode with runs of marked tokens inside [[ ]]; a marked run shows what the model must produce (for MLM
    the original tokens, not the masks). Prefixes are decoded whole so word-piece spacing stays right."""
    sequence = [token if mark else original for original, token, mark in zip(ids, shown, marks, strict=True)]
    pieces: list[str] = []
    decoded_so_far, start = "", 0
    for position in range(1, len(sequence) + 1):
        if position == len(sequence) or marks[position] != marks[start]:
            decoded = tokenizer.decode(sequence[:position])
            text = (
                decoded[len(decoded_so_far) :]
                if decoded.startswith(decoded_so_far)
                else tokenizer.decode(sequence[start:position])
            )
            pieces.append(learned(text) if marks[start] else text)
            decoded_so_far, start = decoded, position
    return "".join(pieces)
