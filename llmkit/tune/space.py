"""The search space of `llmkit tune`: `tune.space` checked against the recipe schema and made into typed
parameters, and recipe mappings with sampled values put in by their dotted paths."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, did_you_mean

if TYPE_CHECKING:
    from llmkit.recipe import Recipe, TuneRange

#: fields a search may not change: where the trial is written, and the search itself
FIXED_FIELDS = ("training.output_dir", "tune")


@dataclass(frozen=True)
class Parameter:
    """One searched field: a float or int range, or a list of choices."""

    path: str
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.path} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        return f"{self.path} in [{self.low:g}, {self.high:g}{scale}]"


def field_annotation(path: str) -> Any:
    """The type of the recipe field at a dotted path; a one-line error naming the path when there is none."""
    from pydantic import BaseModel

    from llmkit.recipe import Recipe, TrainingSection, training_argument_types

    if any(path == fixed or path.startswith(f"{fixed}.") for fixed in FIXED_FIELDS):
        raise LlmkitError(f"recipe field `tune.space`: `{path}` cannot be searched (it is fixed for every trial)")
    parts = path.split(".")
    model: Any = Recipe
    walked: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        fields = model.model_fields
        if part not in fields and model is TrainingSection:
            types = training_argument_types()
            if part in types and last:
                return types[part]
            known = [*fields, *types]
            raise LlmkitError(f"recipe field `tune.space`: `{path}` is not a recipe field{did_you_mean(part, known)}")
        if part not in fields:
            where = ".".join(walked) or "the recipe"
            raise LlmkitError(
                f"recipe field `tune.space`: `{path}` is not a recipe field (no `{part}` in {where})"
                f"{did_you_mean(part, fields)}"
            )
        annotation = fields[part].annotation
        walked.append(part)
        if last:
            return annotation
        candidates = [annotation, *typing.get_args(annotation)]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is None:
            if any(c is dict or typing.get_origin(c) is dict for c in candidates):
                return Any  # a free mapping (model.from_config): any key below it
            raise LlmkitError(f"recipe field `tune.space`: `{'.'.join(walked)}` is a value, not a section ({path})")
        model = section
    return Any


def is_int_field(annotation: Any) -> bool | None:
    """True for an int field, False for a float one, None when the schema does not say."""
    options = [annotation, *typing.get_args(annotation)]
    if float in options:
        return False
    if int in options:
        return True
    return None


def parameters(recipe: Recipe) -> list[Parameter]:
    """`tune.space` checked against the recipe schema and made into typed parameters."""
    assert recipe.tune is not None
    found = []
    for path, spec in recipe.tune.space.items():
        annotation = field_annotation(path)
        if isinstance(spec, list):
            bad = [c for c in spec if not (c is None or isinstance(c, bool | int | float | str))]
            if bad:
                raise LlmkitError(f"recipe field `tune.space.{path}`: choices must be numbers, text or booleans")
            found.append(Parameter(path, "choice", choices=tuple(spec)))
            continue
        found.append(range_parameter(path, spec, annotation))
    return found


def range_parameter(path: str, spec: TuneRange, annotation: Any) -> Parameter:
    whole = (
        isinstance(spec.low, int) and isinstance(spec.high, int) and (spec.step is None or isinstance(spec.step, int))
    )
    integer = is_int_field(annotation)
    if integer is True and not whole:
        raise LlmkitError(f"recipe field `tune.space.{path}`: the field takes whole numbers; give int low/high")
    kind = "int" if (integer is True or (integer is None and whole)) else "float"
    if spec.log and spec.step is not None:
        raise LlmkitError(f"recipe field `tune.space.{path}`: set `log` or `step`, not both")
    return Parameter(path, kind, float(spec.low), float(spec.high), spec.log, spec.step)


def with_values(content: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping with each dotted path set to its value (sections made as needed)."""
    import copy

    result = copy.deepcopy(content)
    for path, value in values.items():
        node = result
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return result


def value_at(content: dict[str, Any], path: str) -> Any:
    node: Any = content
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def base_mapping(recipe: Recipe) -> dict[str, Any]:
    """The recipe as written (resolved), without its `tune:` section."""
    content = recipe.model_dump(mode="json")
    content.pop("tune", None)
    return content


def check_space(recipe: Recipe, space: list[Parameter]) -> None:
    """Recipes at the corners of the space must be valid recipes (wrong types fail here, not in trial 5)."""
    from llmkit.recipe import recipe_from_mapping

    content = base_mapping(recipe)
    for corner in ("low", "high"):
        values = {}
        for parameter in space:
            if parameter.kind == "choice":
                values[parameter.path] = parameter.choices[0 if corner == "low" else -1]
            else:
                number = getattr(parameter, corner)
                values[parameter.path] = int(number) if parameter.kind == "int" else number
        try:
            recipe_from_mapping(with_values(content, values))
        except LlmkitError as err:
            raise LlmkitError(f"recipe field `tune.space`: at the {corner} end of the space: {err}") from None


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
