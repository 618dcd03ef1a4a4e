"""The `training:` section's extra keys, checked against TrainingArguments by name and type when the recipe
loads, instead of failing later inside transformers with a message that names no field."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError

from llmkit.errors import did_you_mean


@functools.cache
def training_argument_types() -> dict[str, Any]:
    """TrainingArguments fields → their type hints (Seq2SeqTrainingArguments: it has every field)."""
    import dataclasses
    import typing

    from transformers import Seq2SeqTrainingArguments

    hints = typing.get_type_hints(Seq2SeqTrainingArguments)
    fields = dataclasses.fields(Seq2SeqTrainingArguments)
    types = {field.name: hints.get(field.name, Any) for field in fields if field.init}
    # Typed `str | None` in transformers, but documented (and preferred) as `fsdp: true` with an `fsdp_config`.
    types["fsdp"] = bool | str | None
    return types


def argument_problem(key: str, value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the TrainingArguments field `key` (typed `hint`), or None when it fits."""
    import enum
    import typing

    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    if key == "report_to":
        return _reporting_problem(value)
    enums = [arg for arg in (hint, *typing.get_args(hint)) if isinstance(arg, type) and issubclass(arg, enum.Enum)]
    if enums and isinstance(value, str):
        choices = [str(member.value) for member in enums[0]]
        if value not in choices:
            listed = f" (one of: {', '.join(choices)})" if len(choices) <= 12 else ""
            return f"unknown value `{value}`{did_you_mean(value, choices) or listed}"
        return None
    try:
        TypeAdapter(hint).validate_python(value)
    except PydanticSchemaGenerationError:
        return None  # a type pydantic cannot describe: transformers checks it
    except ValidationError as err:
        return f"{err.errors()[0]['msg'].removeprefix('Value error, ')} (got {value!r})"
    return None


def _reporting_problem(value: Any) -> str | None:
    """`report_to` names integrations that exist and are installed (Trainer would fail after loading the model)."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return f"expected an integration name or a list of them (got {value!r})"
    known = [*INTEGRATION_TO_CALLBACK, "all", "none"]
    available = get_available_reporting_integrations()
    for name in names:
        if name not in known:
            return f"unknown integration `{name}`{did_you_mean(name, known) or ' (known: ' + ', '.join(known) + ')'}"
        if name not in ("all", "none", "flyte") and name not in available:
            package = f"'llmkit[{name}]'" if name in ("mlflow", "wandb") else name.replace("_", "-")
            return f"`{name}` is not installed (pip install {package})"
    return None
