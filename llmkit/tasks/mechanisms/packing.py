"""Language-model data: tokenize documents and pack them into full blocks (shared by clm and mlm).

Packing concatenates every document of a split (with the tokenizer's separators between them) and cuts the
stream into `max_length` blocks in one vectorised pass over the Arrow columns. Unlike a per-map-batch
`group_texts`, it drops at most one partial block per split, not one per 1000 documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmkit.errors import LlmkitError
from llmkit.tasks.base import tokenize

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from llmkit.recipe import Recipe


def tokenize_documents(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    append_eos: bool,
    extra_columns: tuple[str, ...] = (),
) -> Dataset:
    """Tokenize the `text` column. With packing, whole documents are kept (they are cut into blocks later)."""
    packing = recipe.data.packing
    eos = tokenizer.eos_token_id if append_eos else None
    wants_offsets = "offset_mapping" in extra_columns
    wants_special = "special_tokens_mask" in extra_columns

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [text for text in batch["text"] if text]
        encoded = tokenizer(
            texts,
            truncation=not packing,
            max_length=None if packing else recipe.data.max_length,
            return_attention_mask=False,
            return_offsets_mapping=wants_offsets,
            return_special_tokens_mask=wants_special,
            verbose=False,
        )
        result = {column: encoded[column] for column in ("input_ids", *extra_columns)}
        if eos is None:
            return result
        # A row ending in a newline continues into the next one (line-based text files, wikitext);
        # any other row is a whole document and gets EOS after it, so the model learns where documents end.
        for i, text in enumerate(texts):
            if not text.endswith("\n"):
                result["input_ids"][i] = result["input_ids"][i] + [eos]
                if wants_offsets:
                    result["offset_mapping"][i] = result["offset_mapping"][i] + [(0, 0)]
                if wants_special:
                    result["special_tokens_mask"][i] = result["special_tokens_mask"][i] + [1]
        return result

    return tokenize(dataset, encode, recipe, "Tokenizing")


def pack(tokenized: Dataset, block_size: int, split: str) -> Dataset:
    """Concatenate all token columns of a split and cut them into `block_size` blocks (no padding)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    tokenized = tokenized.flatten_indices() if tokenized._indices is not None else tokenized
    table = tokenized.data
    columns = {}
    total = 0
    for name in tokenized.column_names:
        chunks = table.column(name).chunks
        flat = pa.concat_arrays([chunk.flatten() for chunk in chunks]) if chunks else pa.array([], pa.int64())
        values = flat.to_numpy(zero_copy_only=False)
        if values.dtype == object:  # list of pairs (offset_mapping)
            values = np.stack(values) if len(values) else values.reshape(0, 2)
        total = len(values)
        columns[name] = values
    blocks = total // block_size
    if blocks == 0:
        raise LlmkitError(
            f"the {split} data has {total} tokens, fewer than one block of `data.max_length` = {block_size}; "
            "add data or lower data.max_length"
        )
    arrays = {}
    for name, values in columns.items():
        kept = values[: blocks * block_size]
        if kept.ndim == 2:  # pairs: (start, end) offsets
            inner = pa.FixedSizeListArray.from_arrays(pa.array(kept.reshape(-1)), 2)
            arrays[name] = pa.FixedSizeListArray.from_arrays(inner, block_size)
        else:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(kept), block_size)
    return Dataset(pa.table(arrays))


def lm_features(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    split: str,
    append_eos: bool,
    extra_columns: tuple[str, ...] = (),
) -> Dataset:
    """Documents → model inputs: packed blocks, or one truncated sequence per document."""
    tokenized = tokenize_documents(dataset, tokenizer, recipe, append_eos, extra_columns)
    if len(tokenized) == 0:
        raise LlmkitError(f"data column `text` has no non-empty text in the {split} data")
    return pack(tokenized, recipe.data.max_length, split) if recipe.data.packing else tokenized


def token_count(dataset: Dataset) -> int:
    """Tokens in a tokenized dataset (for tokens/s and check statistics)."""
    import pyarrow.compute as pc

    column = dataset.data.column("input_ids")
    return int(pc.sum(pc.list_value_length(column)).as_py() or 0)
