"""Raw data: load a hub dataset or local files, map column roles, make the eval split, cap sample counts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from llmkit.recipe import DataSection

BUILDERS = {".txt": "text", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


BUILTIN_PREFIX = "builtin:"


def builtin_corpus(name: str, field: str) -> Dataset:
    """Text every Python install carries, so a recipe can train with nothing downloaded.

    `builtin:pydoc-topics`: the 79 documentation topics of the Python reference (`pydoc_data`), ~465 KB.
    """
    from datasets import Dataset

    if name != "pydoc-topics":
        raise LlmkitError(f"recipe field `data.{field}`: unknown built-in corpus `{name}` (known: pydoc-topics)")
    from pydoc_data.topics import topics

    return Dataset.from_dict({"text": [topics[key] for key in sorted(topics)]})


def is_local(source: str) -> bool:
    return Path(source).exists() or Path(source).suffix.lower() in BUILDERS


def _data_files(path: Path, field: str) -> list[Path]:
    """The files of a local source: the file itself or the supported files of a folder."""
    if not path.exists():
        raise LlmkitError(f"recipe field `data.{field}`: file not found: {path}{where_looked(path)}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in BUILDERS)
        if not files:
            raise LlmkitError(f"recipe field `data.{field}`: folder {path} has no {'/'.join(BUILDERS)} files")
        suffixes = sorted({f.suffix.lower() for f in files})
        if len({".json" if s == ".jsonl" else s for s in suffixes}) > 1:  # one reader reads them all
            kinds = ", ".join(suffixes)
            raise LlmkitError(f"recipe field `data.{field}`: folder {path} mixes file kinds ({kinds}); keep one kind")
        return files
    if path.suffix.lower() not in BUILDERS:
        expected = ", ".join(BUILDERS)
        raise LlmkitError(f"recipe field `data.{field}`: {path.name} has an unsupported extension (use {expected})")
    if path.stat().st_size == 0:
        raise LlmkitError(f"recipe field `data.{field}`: {path} is empty")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as err:
        raise LlmkitError(f"recipe field `data.{field}`: cannot read {path}: {err.strerror or err}") from None
    return [path]


def where_looked(path: Path) -> str:
    """Where a relative data path was looked for, and the variable that moves the shipped recipes' data."""
    import os

    hint = ""
    if not path.is_absolute():
        hint = f" (looked in the working folder {Path.cwd()} and beside the recipe)"
    if "shared/data" in path.as_posix() and "LLMKIT_DATA_DIR" not in os.environ:
        hint += "; set LLMKIT_DATA_DIR to the folder that holds the shared data"
    return hint


def _json_layout(path: Path) -> tuple[str | None, bool]:
    """(field holding the records, is nested SQuAD) for a .json file; JSON lines give (None, False)."""
    with path.open("rb") as handle:
        head = handle.read(1)
        while head.isspace():
            head = handle.read(1)
    if head != b"{" or path.suffix.lower() == ".jsonl":
        return None, False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None, False  # JSON lines in a .json file
    if isinstance(content, dict) and isinstance(content.get("data"), list):
        first = content["data"][0] if content["data"] else {}
        return "data", isinstance(first, dict) and "paragraphs" in first
    return None, False


def _flatten_squad(path: Path) -> list[dict[str, Any]]:
    """The original nested SQuAD layout (data → paragraphs → qas) as one row per question."""
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return rows


def load_local(path: Path, field: str) -> Dataset:
    """One local file or folder as a Dataset (datasets' own builders, so it is cached)."""
    from datasets import Dataset, load_dataset

    files = _data_files(path, field)
    suffix = files[0].suffix.lower()
    builder = BUILDERS[suffix]
    options: dict[str, Any] = {}
    if suffix == ".tsv":
        options["delimiter"] = "\t"
        options["quoting"] = 3  # csv.QUOTE_NONE: GLUE tsv files contain bare quotes
    if builder == "text":
        options["keep_linebreaks"] = True  # newlines are text a language model must learn
    if builder == "json":
        record_field, nested_squad = _json_layout(files[0])
        if nested_squad:
            return Dataset.from_list([row for f in files for row in _flatten_squad(f)])
        if record_field:
            options["field"] = record_field
    try:
        with quiet_progress(), no_datasets_logs():
            dataset = load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except UnicodeDecodeError:
        raise LlmkitError(f"recipe field `data.{field}`: {path} is not UTF-8 text") from None
    except Exception as err:  # datasets wraps parser errors in many types
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError) or "utf-8" in str(cause).lower():
            raise LlmkitError(f"recipe field `data.{field}`: {path} is not UTF-8 text") from None
        message = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
        raise LlmkitError(f"recipe field `data.{field}`: cannot read {path} as {builder}: {message}") from None
    if len(dataset) == 0:
        raise LlmkitError(f"recipe field `data.{field}`: {path} has no rows")
    return dataset


@contextmanager
def quiet_progress(when: bool = True) -> Iterator[None]:
    """No `datasets` progress bar for a step that takes a second or two: it is noise, and a data error found
    during that step would share stderr with the bar instead of being the one line printed."""
    import datasets

    if when and datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            datasets.enable_progress_bars()
    else:
        yield


@contextmanager
def no_datasets_logs() -> Iterator[None]:
    """`datasets` logs a parse failure before raising it; the one-line error raised here says it instead."""
    import logging

    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(level)


def load_hub(section: DataSection, split: str, field: str) -> Dataset:
    from datasets import load_dataset

    from llmkit import hub

    hub.prepare(section.train)
    try:
        return load_dataset(section.train, section.config_name, split=split)
    except Exception as err:
        if hub.offline():
            raise LlmkitError(f"recipe field `data.{field}`: {hub.advice(section.train, 'data.train')}") from None
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise LlmkitError(
            f"recipe field `data.{field}`: cannot load `{section.train}` split `{split}`: {first}"
        ) from None


def load_raw(section: DataSection, with_train: bool = True) -> DatasetDict:
    """A DatasetDict with `train` and, when the recipe has one, `eval`.

    `with_train=False` (evaluating a trained run) skips reading the training data when the eval set
    stands on its own; a `validation_split` still needs it.
    """
    from datasets import DatasetDict

    local = is_local(section.train)
    if not with_train and section.eval is not None:
        return DatasetDict({"eval": _first(_load_eval(section, local), section.max_eval_samples)})
    if section.train.startswith(BUILTIN_PREFIX):
        train = builtin_corpus(section.train.removeprefix(BUILTIN_PREFIX), "train")
    elif local:
        train = load_local(Path(section.train), "train")
    else:
        train = load_hub(section, section.train_split, "train")
    splits = {"train": train}
    if section.eval is not None:
        splits["eval"] = _load_eval(section, local)
    elif section.validation_split is not None:
        if len(train) < 2:
            raise LlmkitError("recipe field `data.validation_split`: the training data has fewer than 2 rows")
        parts = train.train_test_split(test_size=section.validation_split, seed=0, shuffle=True)
        splits = {"train": parts["train"], "eval": parts["test"]}
    splits["train"] = _first(splits["train"], section.max_train_samples)
    if "eval" in splits:
        splits["eval"] = _first(splits["eval"], section.max_eval_samples)
    return DatasetDict(splits)


def _load_eval(section: DataSection, train_is_local: bool) -> Dataset:
    """`data.eval`: a local file, or a split of the hub dataset named by `data.train`."""
    if train_is_local or is_local(str(section.eval)):
        return load_local(Path(str(section.eval)), "eval")
    return load_hub(section, str(section.eval), "eval")


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def map_columns(
    raw: DatasetDict, columns: dict[str, str], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> DatasetDict:
    """Rename dataset columns to task roles; a missing column is an error that lists what the data has.

    A role not in `data.columns` defaults to a column of the same name; a single-role task (clm/mlm)
    takes the only column there is.
    """
    known = set(required) | set(optional)
    for role in columns:
        if role not in known:
            raise LlmkitError(
                f"recipe field `data.columns`: unknown role `{role}` for this task (roles: {', '.join(sorted(known))})"
            )
    result = {}
    for split, dataset in raw.items():
        available = list(dataset.column_names)
        mapping: dict[str, str] = {}
        for role in (*required, *optional):
            column = columns.get(role, role)
            if column not in available:
                if role in optional and role not in columns:
                    continue
                if role in columns or len(required) > 1 or len(available) > 1:
                    raise LlmkitError(
                        f"data column `{column}` (role `{role}`) not found in the {split} data; "
                        f"columns are: {', '.join(available)} — set `data.columns.{role}`"
                    )
                column = available[0]
            mapping[column] = role
        dataset = dataset.select_columns(list(mapping))
        renames = {column: role for column, role in mapping.items() if column != role}
        result[split] = dataset.rename_columns(renames) if renames else dataset
    return type(raw)(result)


def require_text(raw: DatasetDict, roles: tuple[str, ...], columns: dict[str, str]) -> None:
    """Text roles must hold strings: numbers or mixed JSON values would otherwise fail deep inside the tokenizer."""
    for split, dataset in raw.items():
        for role in roles:
            feature = dataset.features.get(role)
            if feature is None:
                continue
            dtype = getattr(feature, "dtype", None)
            if dtype not in ("string", "large_string"):
                found = {"null": "only empty", None: type(feature).__name__}.get(dtype, dtype)
                if found == "Json":
                    found = "mixed-type JSON"
                raise LlmkitError(
                    f"data column `{columns.get(role, role)}` (role `{role}`) must hold text, "
                    f"but the {split} data has {found} values"
                )


def fingerprints(section: DataSection, raw: DatasetDict) -> dict[str, Any]:
    """What the run was trained on, so two runs can be compared: sha256 of local files, ids of hub datasets."""
    result: dict[str, Any] = {}
    for field in ("train", "eval"):
        source = getattr(section, field)
        if source is None:
            continue
        entry: dict[str, Any] = {"source": source}
        path = Path(source)
        if path.is_file() or path.is_dir():
            files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in BUILDERS)
            entry["sha256"] = {str(f): _sha256(f) for f in files}
        else:
            entry["config_name"] = section.config_name
        result[field] = entry
    if section.eval is None and section.validation_split is not None:
        result["eval"] = {"source": f"{section.validation_split:g} of data.train, held out"}
    for split, dataset in raw.items():
        result.setdefault(split, {})["rows"] = len(dataset)
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
