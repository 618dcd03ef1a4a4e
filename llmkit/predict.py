"""`llmkit predict`: run a trained run folder on new inputs, using the task that trained it.

Inputs come as `--text` or as a file in any layout the data loader reads (.csv/.tsv with a header, .jsonl,
.json, .txt with one input a line, `-` for standard input). Each result keeps the input's other fields, so
results can be joined back to the inputs; a field that the prediction replaces (a gold `label`) is kept as
`reference`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.export import is_export_folder, load_onnx_model
from llmkit.run import Run

READERS = (".csv", ".tsv", ".jsonl", ".json", ".txt")


def predict(run_dir: Path, texts: list[str], file: Path | None, output: Path | None, overwrite: bool) -> int:
    """`llmkit predict`: read the inputs, run the folder's model on them, write the results; returns how many.
    An existing `output` is refused before anything is loaded."""
    if output is not None and output.exists() and not overwrite:
        raise LlmkitError(f"--output {output} exists: pass --overwrite to replace it, or choose another file")
    if output is not None and output.is_dir():
        raise LlmkitError(f"--output {output} is a folder; give a file name")
    records = predict_rows(run_dir, read_inputs(texts, file))
    write(records, output)
    return len(records)


def read_inputs(texts: list[str], file: Path | None) -> list[dict[str, Any]]:
    """Inputs as rows: --text gives the first role (`text`); a file gives whole rows."""
    if bool(texts) == (file is not None):
        raise LlmkitError("give either --text (one or more) or --file, not both and not neither")
    if file is None:
        if not all(text.strip() for text in texts):
            raise LlmkitError("--text is empty: give the text to run the model on")
        return [{"text": text} for text in texts]
    if str(file) == "-":
        content = sys.stdin.read()
        suffix = ".jsonl" if content.lstrip().startswith("{") else ".txt"
    else:
        if not file.is_file():
            raise LlmkitError(f"--file {file}: file not found")
        suffix = file.suffix.lower()
        if suffix not in READERS:
            raise LlmkitError(f"--file {file}: unsupported extension (use {', '.join(READERS)} or - for stdin)")
        try:
            content = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LlmkitError(f"--file {file}: not UTF-8 text") from None
    rows = parse(content, suffix, file)
    if not rows:
        raise LlmkitError(f"--file {file}: no inputs in it")
    for number, row in enumerate(rows, 1):
        if isinstance(row.get("text"), str) and not row["text"].strip():
            raise LlmkitError(f"--file {file}: input {number} has an empty `text`")
    return rows


def parse(content: str, suffix: str, file: Path) -> list[dict[str, Any]]:
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(content), delimiter="\t" if suffix == ".tsv" else ",")
        rows = []
        for row in reader:
            if None in row or None in row.values():  # more or fewer cells than the header names
                raise LlmkitError(
                    f"--file {file}: line {reader.line_num} does not have the header's {len(reader.fieldnames or [])} "
                    "fields (quote a text that holds the delimiter)"
                )
            rows.append(dict(row))
        return rows
    if suffix == ".jsonl":
        return json_lines(content, file)
    if suffix == ".json":
        try:
            content_json = json.loads(content)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # JSON lines under a .json name (as the HF example fixtures)
                return json_lines(content, file)
            raise LlmkitError(f"--file {file}: not valid JSON (line {err.lineno})") from None
        records = content_json.get("data") if isinstance(content_json, dict) else content_json
        if not isinstance(records, list):
            raise LlmkitError(f"--file {file}: expected a list of objects (or {{'data': [...]}})")
        return [row if isinstance(row, dict) else {"text": row} for row in records]
    return [{"text": line} for line in content.splitlines() if line.strip()]


def json_lines(content: str, file: Path | None) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise LlmkitError(f"--file {file}: line {number} is not JSON") from None
        rows.append(row if isinstance(row, dict) else {"text": row})
    return rows


def predict_rows(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per row, from the run folder's model (PyTorch, or ONNX Runtime for an export folder)."""
    run = Run.of_folder(run_dir)
    model = load_onnx_model(run_dir, run) if is_export_folder(run_dir) else run.model()
    inputs = as_roles(rows, run.recipe.data.columns)
    results = run.task.predict(model, run.tokenizer, inputs, run.recipe)
    return [joined(result, row) for result, row in zip(results, rows, strict=True)]


def as_roles(rows: list[dict[str, Any]], columns: dict[str, str | list[str]]) -> list[dict[str, Any]]:
    """Rows keyed by task role: a file in the training data's own layout (`sentence`, or `ending0..3` gathered
    into `choices`) works as is."""
    role_of = {column: role for role, column in columns.items() if isinstance(column, str)}
    gathered = {role: names for role, names in columns.items() if isinstance(names, list)}
    result = []
    for row in rows:
        mapped = {role_of.get(key, key): value for key, value in row.items()}
        for role, names in gathered.items():
            if role not in mapped and all(name in row for name in names):
                mapped[role] = [row[name] for name in names]
        result.append(mapped)
    return result


def joined(result: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The result with the input's other fields; an input field the result replaced is kept as `reference`."""
    record = dict(result)
    for key, value in row.items():
        if key not in record:
            record[key] = value
        elif record[key] != value and "reference" not in record:
            record["reference"] = value
    return record


def write(records: list[dict[str, Any]], output: Path | None) -> None:
    """JSON lines on stdout, or into `--output` (written whole, then moved in place)."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if output is None:
        sys.stdout.write(lines)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(lines, encoding="utf-8")
    temporary.replace(output)
