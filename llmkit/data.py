"""Raw data: load a hub dataset or local files, map column roles, make the eval split, cap sample counts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
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


def _json_records_field(path: Path) -> str | None:
    """`data` for a .json file holding `{"data": [records]}` (the HF example fixtures' layout), else None."""
    with path.open("rb") as handle:
        head = handle.read(1)
        while head.isspace():
            head = handle.read(1)
    if head != b"{" or path.suffix.lower() == ".jsonl":
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # JSON lines in a .json file
    return "data" if isinstance(content, dict) and isinstance(content.get("data"), list) else None


#: a task's reader of its own file layouts: rows, or None when the file is an ordinary one
Reader = Callable[[Path], "list[dict[str, Any]] | None"]


def load_local(path: Path, field: str, reader: Reader | None = None) -> Dataset:
    """One local file or folder as a Dataset (datasets' own builders, so it is cached), unless the task reads
    the layout itself (`reader`)."""
    from datasets import Dataset, load_dataset

    task_file = reader is not None and path.is_file() and path.suffix.lower() not in BUILDERS
    files = [path] if task_file and path.stat().st_size else _data_files(path, field)
    own = reader(files[0]) if reader is not None else None
    if own is None and task_file:
        files = _data_files(path, field)  # not the task's layout either: the usual message
    if own is not None:
        rows = [*own, *(row for f in files[1:] for row in (reader(f) or []))]  # type: ignore[misc]
        if not rows:
            raise LlmkitError(f"recipe field `data.{field}`: {path} has no rows")
        return Dataset.from_list(rows)
    builder, options = builder_options(files)
    with reading(path, field, builder):
        dataset = load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    if len(dataset) == 0:
        raise LlmkitError(f"recipe field `data.{field}`: {path} has no rows")
    return dataset


def builder_options(files: list[Path]) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder for these files and how it must read them."""
    suffix = files[0].suffix.lower()
    builder = BUILDERS[suffix]
    options: dict[str, Any] = {}
    if suffix == ".tsv":
        options["delimiter"] = "\t"
        options["quoting"] = 3  # csv.QUOTE_NONE: GLUE tsv files contain bare quotes
    if builder == "text":
        options["keep_linebreaks"] = True  # newlines are text a language model must learn
    if builder == "json" and _json_records_field(files[0]):
        options["field"] = "data"
    return builder, options


@contextmanager
def reading(path: Path, field: str, builder: str) -> Iterator[None]:
    """A file `datasets` cannot parse is one line naming it (its parser errors come in many types)."""
    try:
        with quiet_progress(), no_datasets_logs():
            yield
    except LlmkitError:
        raise
    except UnicodeDecodeError:
        raise LlmkitError(f"recipe field `data.{field}`: {path} is not UTF-8 text") from None
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError) or "utf-8" in str(cause).lower():
            raise LlmkitError(f"recipe field `data.{field}`: {path} is not UTF-8 text") from None
        if "corresponds to no data" in str(cause):  # a header and no rows
            raise LlmkitError(f"recipe field `data.{field}`: {path} has no rows") from None
        raise LlmkitError(
            f"recipe field `data.{field}`: cannot read {path} as {builder}: {first_line(cause)}"
        ) from None


def first_line(err: BaseException, most: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), cut to `most` characters."""
    text = str(err).strip()
    return text.splitlines()[0][:most] if text else type(err).__name__


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


def load_hub(section: DataSection, split: str, field: str, streaming: bool = False) -> Any:
    from datasets import load_dataset

    from llmkit import hub

    hub.prepare(section.train)
    try:
        return load_dataset(section.train, section.config_name, split=split, streaming=streaming)
    except Exception as err:
        if hub.offline():
            raise LlmkitError(f"recipe field `data.{field}`: {hub.advice(section.train, 'data.train')}") from None
        raise LlmkitError(
            f"recipe field `data.{field}`: cannot load `{section.train}` split `{split}`: {first_line(err)}"
        ) from None


def load_raw(section: DataSection, with_train: bool = True, reader: Reader | None = None) -> DatasetDict:
    """A DatasetDict with `train` and, when the recipe has one, `eval`.

    `with_train=False` (evaluating a trained run) skips reading the training data when the eval set
    stands on its own; a `validation_split` still needs it.
    """
    from datasets import DatasetDict

    local = is_local(section.train)
    if not with_train and section.eval is not None:
        return DatasetDict({"eval": _first(_load_eval(section, local, reader), section.max_eval_samples)})
    if section.streaming:  # the eval data (a file or split of its own) is read into memory
        from llmkit.streaming import load_stream

        train = load_stream(section)
    elif section.train.startswith(BUILTIN_PREFIX):
        train = builtin_corpus(section.train.removeprefix(BUILTIN_PREFIX), "train")
    elif local:
        train = load_local(Path(section.train), "train", reader)
    else:
        train = load_hub(section, section.train_split, "train")
    splits = {"train": train}
    if section.eval is not None:
        splits["eval"] = _load_eval(section, local, reader)
    elif section.validation_split is not None:
        if len(train) < 2:
            raise LlmkitError("recipe field `data.validation_split`: the training data has fewer than 2 rows")
        parts = train.train_test_split(test_size=section.validation_split, seed=0, shuffle=True)
        splits = {"train": parts["train"], "eval": parts["test"]}
    if not section.streaming:  # a stream takes its first rows as it is read
        splits["train"] = _first(splits["train"], section.max_train_samples)
    if "eval" in splits:
        splits["eval"] = _first(splits["eval"], section.max_eval_samples)
    return DatasetDict(splits)


def _load_eval(section: DataSection, train_is_local: bool, reader: Reader | None) -> Dataset:
    """`data.eval`: a local file, or a split of the hub dataset named by `data.train`."""
    if train_is_local or is_local(str(section.eval)):
        return load_local(Path(str(section.eval)), "eval", reader)
    return load_hub(section, str(section.eval), "eval")


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def map_columns(
    raw: DatasetDict, columns: dict[str, str | list[str]], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> DatasetDict:
    """Rename dataset columns to task roles; a missing column is an error that lists what the data has.

    A role not in `data.columns` defaults to a column of the same name; a single-role task (clm/mlm) takes
    the only column there is; a role given a list of columns (`choices: [ending0, ending1]`) gets their
    values as one list per row.
    """
    known = set(required) | set(optional)
    for role in columns:
        if role not in known:
            raise LlmkitError(
                f"recipe field `data.columns`: unknown role `{role}` for this task (roles: {', '.join(sorted(known))})"
            )
    return type(raw)({split: _roles_of(dataset, split, columns, required, optional) for split, dataset in raw.items()})


def _roles_of(
    dataset: Dataset,
    split: str,
    columns: dict[str, str | list[str]],
    required: tuple[str, ...],
    optional: tuple[str, ...],
) -> Dataset:
    available = list(dataset.column_names)
    mapping: dict[str, str] = {}
    gathered: dict[str, list[str]] = {}
    for role in (*required, *optional):
        column = columns.get(role, role)
        if isinstance(column, list):
            missing = [name for name in column if name not in available]
            if missing:
                raise column_not_found(missing[0], role, split, available)
            gathered[role] = column
            continue
        if column not in available:
            if role in optional and role not in columns:
                continue
            if role in columns or len(required) > 1 or len(available) > 1:
                raise column_not_found(column, role, split, available)
            column = available[0]
        mapping[column] = role
    if gathered:
        dataset = dataset.map(
            lambda row: {role: [row[name] for name in names] for role, names in gathered.items()},
            desc=f"Gathering {split} columns",
        )
    dataset = dataset.select_columns([*mapping, *gathered])
    renames = {column: role for column, role in mapping.items() if column != role}
    return dataset.rename_columns(renames) if renames else dataset


def column_not_found(column: str, role: str, split: str, available: list[str]) -> LlmkitError:
    return LlmkitError(
        f"data column `{column}` (role `{role}`) not found in the {split} data; "
        f"columns are: {', '.join(available)} — set `data.columns.{role}`"
    )


#: what a role's column may hold, by the kind a task gives the role: (element dtypes, "list" or "scalar")
KINDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "text": (("string", "large_string"), "scalar", "text"),
    "tokens": (("string", "large_string"), "list", "a list of words"),
    "choices": (("string", "large_string"), "list", "a list of texts"),
    "tags": (("string", "large_string", "int64", "int32", "int16", "int8"), "list", "a list of labels"),
}


def check_roles(raw: DatasetDict, kinds: dict[str, str], columns: dict[str, str | list[str]]) -> None:
    """Each role's column holds what its kind says (text, a list of words, ...): numbers or mixed JSON values
    would otherwise fail deep inside the tokenizer. Kinds not in `KINDS` (labels, answers, messages) are
    checked by their task."""
    for split, dataset in raw.items():
        for role, kind in kinds.items():
            feature = dataset.features.get(role)
            if feature is None or kind not in KINDS:
                continue
            dtypes, shape, words = KINDS[kind]
            found = _holds(feature, shape)
            if found not in dtypes:
                column = columns.get(role, role)
                named = ", ".join(column) if isinstance(column, list) else column
                raise LlmkitError(
                    f"data column `{named}` (role `{role}`) must hold {words}, but the {split} data has {found} values"
                )


def _holds(feature: Any, shape: str) -> str:
    """The element dtype of a column, in words when it is not a plain value of the expected shape."""
    inner = getattr(feature, "feature", None)
    is_list = inner is not None and type(feature).__name__ in ("List", "Sequence", "LargeList")
    if shape == "list" and not is_list:
        if type(feature).__name__ == "Json":
            return "mixed-type JSON (not a list in every row)"
        dtype = getattr(feature, "dtype", None)
        return f"single {'text' if dtype in ('string', 'large_string') else dtype}" if dtype else type(feature).__name__
    if shape == "scalar" and is_list:
        return "list"
    value = inner if shape == "list" else feature
    dtype = getattr(value, "dtype", None)
    if dtype == "null":
        return "only empty"
    if dtype is None:
        return "mixed-type JSON" if type(value).__name__ == "Json" else type(value).__name__
    return dtype


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
        result.setdefault(split, {})["rows"] = len(dataset) if hasattr(dataset, "__len__") else "streamed"
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
