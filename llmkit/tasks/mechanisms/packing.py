"""Language-model data: tokenize documents and pack them into full blocks (shared by clm and mlm).

Packing concatenates every document of a split (with the tokenizer's separators between them) and cuts the
stream into `max_length` blocks in one vectorised pass over the Arrow columns. Unlike a per-map-batch
`group_texts`, it drops at most one partial block per split, not one per 1000 documents. With
`data.packing: documents` a `document_starts` column (1 at each document's first token) is packed along, and
the collator confines attention to each document (`padding_free.isolate_documents`).

With `data.streaming: true` the documents come as a stream: they are tokenized as they are read and
`stream_blocks` cuts the same blocks on the fly (a document's leftover tokens start the next block, only the
stream's last partial block is dropped), so memory holds one block buffer, never the split. The blocks are
then shuffled in a buffer of `SHUFFLE_BUFFER` blocks seeded by `training.seed` (and the epoch): an in-memory
run draws its order from all blocks, a stream only from those in the buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.tasks.base import tokenize
from llmkit.tasks.mechanisms.padding_free import document_starts, packing_mode

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
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
    packing = packing_mode(recipe, default=True)
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
            return with_document_starts(result, texts)
        # A row ending in a newline continues into the next one (line-based text files, wikitext);
        # any other row is a whole document and gets EOS after it, so the model learns where documents end.
        for i, text in enumerate(texts):
            if not text.endswith("\n"):
                result["input_ids"][i] = result["input_ids"][i] + [eos]
                if wants_offsets:
                    result["offset_mapping"][i] = result["offset_mapping"][i] + [(0, 0)]
                if wants_special:
                    result["special_tokens_mask"][i] = result["special_tokens_mask"][i] + [1]
        return with_document_starts(result, texts)

    def with_document_starts(result: dict[str, list], texts: list[str]) -> dict[str, list]:
        if packing == "documents":
            result["document_starts"] = document_starts(texts, [len(ids) for ids in result["input_ids"]])
        return result

    from llmkit.streaming import is_streamed

    if is_streamed(dataset):  # tokenized lazily, batch by batch, as training reads it
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)
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
    from llmkit.streaming import is_streamed

    if is_streamed(tokenized):
        packed = packing_mode(recipe, default=True)
        rows = stream_blocks(tokenized, recipe.data.max_length, split) if packed else tokenized
        return rows.shuffle(seed=recipe.training.seed, buffer_size=SHUFFLE_BUFFER)
    if len(tokenized) == 0:
        raise LlmkitError(f"data column `text` has no non-empty text in the {split} data")
    return pack(tokenized, recipe.data.max_length, split) if packing_mode(recipe, default=True) else tokenized


#: blocks a streamed split is shuffled among (at 512 tokens, ~20 MB of Python lists)
SHUFFLE_BUFFER = 1000


def stream_blocks(tokenized: IterableDataset, block_size: int, split: str) -> IterableDataset:
    """The blocks `pack` cuts, cut from a token stream as it is read (the first one here: a stream with fewer
    tokens than one block is the same one-line error as in memory)."""
    from datasets import IterableDataset

    blocks = IterableDataset.from_generator(cut_blocks, gen_kwargs={"rows": tokenized, "block_size": block_size})
    if next(iter(blocks), None) is None:
        raise LlmkitError(
            f"the {split} data has fewer tokens than one block of `data.max_length` = {block_size}; "
            "add data or lower data.max_length"
        )
    return blocks


def cut_blocks(rows: Iterable[dict[str, list]], block_size: int) -> Iterator[dict[str, list]]:
    """Concatenate the token columns of rows as they come and yield every full `block_size` block."""
    buffers: dict[str, list] = {}
    for row in rows:
        for name, values in row.items():
            buffers.setdefault(name, []).extend(values)
        full = len(buffers["input_ids"]) // block_size * block_size
        if full == 0:
            continue
        for start in range(0, full, block_size):
            yield {name: values[start : start + block_size] for name, values in buffers.items()}
        for values in buffers.values():
            del values[:full]


def row_lengths(dataset: Dataset) -> Any:
    """Input tokens per row of a tokenized dataset, as a numpy array; a row of several sequences (the choices
    of a multiple-choice example) counts the tokens of all of them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.data.column("input_ids").combine_chunks()
    if not pa.types.is_list(column.type.value_type) and not pa.types.is_large_list(column.type.value_type):
        return pc.list_value_length(column).to_numpy(zero_copy_only=False)
    inner = pc.list_value_length(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    return np.bincount(parents, weights=inner, minlength=len(column)).astype(np.int64)


def token_count(dataset: Dataset) -> int:
    """Tokens in a tokenized dataset (for tokens/s and check statistics)."""
    return int(row_lengths(dataset).sum())
