"""`data.streaming: true`: the training data as a `datasets.IterableDataset`, read as training consumes it.

Nothing is written to the `datasets` cache and no split is held in memory: a local file is read in chunks by
the same builder as an in-memory run (text, csv, json, parquet), a hub dataset is streamed from the hub. The
first row is read here, so a file that cannot be parsed, or holds nothing, fails before training, in one line.

With the Trainer: a stream has no length, so `training.max_steps` sets the run's length (`Task.check_streaming`);
a stream that ends first is read again, its shuffle reseeded by the epoch (`IterableDataset.set_epoch`), and a
resumed run skips the batches it already took by reading them again. With several processes accelerate
dispatches a stream's batches (`dispatch_batches`, its default for an IterableDataset): process 0 reads,
packs and collates the batches of all processes and sends each its own, so every process sees different
blocks and the others read nothing; the corpus is read once, at the speed of one process. `tokenizer.train`
reads the stream once more, before training, to learn the vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from datasets import IterableDataset

    from llmkit.recipe import DataSection


def is_streamed(dataset: Any) -> bool:
    """Rows that come one by one, with no length (the train features of a `data.streaming` run)."""
    from datasets import IterableDataset

    return isinstance(dataset, IterableDataset)


def load_stream(section: DataSection) -> IterableDataset:
    """`data.train` as a stream, its features known (from the first row when the builder does not say)."""
    from datasets import load_dataset

    from llmkit import data

    if section.train.startswith(data.BUILTIN_PREFIX):
        corpus = data.builtin_corpus(section.train.removeprefix(data.BUILTIN_PREFIX), "train")
        return corpus.to_iterable_dataset()
    if data.is_local(section.train):
        path = Path(section.train)
        files = data._data_files(path, "train")
        builder, options = data.builder_options(files)
        with data.reading(path, "train", builder):
            stream = load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True, **options)
            stream = _with_features(stream, path)
    else:
        stream = data.load_hub(section, section.train_split, "train", streaming=True)
        with data.reading(Path(section.train), "train", "a stream"):
            stream = _with_features(stream, section.train)
    if section.max_train_samples is not None:
        stream = stream.take(section.max_train_samples)
    return stream


def _with_features(stream: IterableDataset, source: Any) -> IterableDataset:
    first = next(iter(stream), None)
    if first is None:
        raise LlmkitError(f"recipe field `data.train`: {source} has no rows")
    return stream if stream.features is not None else stream._resolve_features()
