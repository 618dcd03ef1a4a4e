"""Reading a recipe: safe YAML, `extends:` chains, `key=value` overrides, `${VAR}` and data paths beside the
recipe, then validation into a `Recipe` with errors that name the recipe field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmkit.errors import LlmkitError, did_you_mean
from llmkit.recipe.schema import EXPECT_PATTERN, Recipe
from llmkit.section import expand_path

SUBFIELD_MESSAGE = re.compile(r"^field `([\w.]+)`: (.*)$", re.DOTALL)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: YAML keeps the last silently, which hides a user's mistake."""


class RecipeLoader(yaml.SafeLoader):
    """yaml.safe_load, except that only true/false are booleans (YAML 1.2): `eval_strategy: no` stays "no",
    and a key given twice in one mapping is an error instead of silently keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            if key in first_line:
                line = key_node.start_mark.line + 1
                raise DuplicateKey(
                    problem=f"key `{key}` appears twice (lines {first_line[key]} and {line}); keep one",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """Safe YAML (no object construction) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=RecipeLoader)  # RecipeLoader is a SafeLoader: no object construction


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A recipe file's content as a mapping, with one-line errors for missing/invalid files."""
    if not path.is_file():
        raise LlmkitError(f"recipe file not found: {path}")
    try:
        content = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LlmkitError(f"recipe file {path} is not UTF-8 text") from None
    except DuplicateKey as err:
        raise LlmkitError(f"recipe file {path}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise LlmkitError(f"recipe file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(content, dict):
        raise LlmkitError(f"recipe file {path} must be a mapping of sections (task:, model:, data:, training:)")
    return content


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_extends(path: Path, seen: tuple[Path, ...] = (), chain: list[Path] | None = None) -> dict[str, Any]:
    """Read a recipe and the chain of recipes it `extends:` (paths relative to the file); `chain` collects
    the files read."""
    path = path.resolve()
    if path in seen:
        raise LlmkitError(f"recipe `extends:` loops back to {path}")
    content = read_yaml_mapping(path)
    if chain is not None:
        chain.append(path)
    parent = content.pop("extends", None)
    if parent is None:
        return content
    if not isinstance(parent, str):
        raise LlmkitError(f"recipe field `extends` in {path} must be a file path")
    return deep_merge(resolve_extends(path.parent / parent, (*seen, path), chain), content)


def apply_overrides(content: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`3`, `1e-4`, `true`, `[a, b]`)."""
    result = deep_merge({}, content)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise LlmkitError(
                f"bad override `{item}`: expected key=value with a dotted recipe field, e.g. training.seed=1"
            )
        try:
            value = parse_yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            raise LlmkitError(f"bad override `{item}`: the value is not valid YAML") from None
        node = result
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise LlmkitError(f"bad override `{item}`: `{'.'.join(parts[: i + 1])}` is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return result


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at a validation-error location (for 'did you mean')."""
    model: Any = Recipe
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def describe_validation_error(err: ValidationError) -> str:
    """All problems of a ValidationError on one line, each naming its recipe field."""
    messages = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"] if not str(p).startswith(("function-", "literal[")))
        field = ".".join(loc)
        if item["type"] == "extra_forbidden":
            parent, key = item["loc"][:-1], str(item["loc"][-1])
            messages.append(f"unknown recipe field `{field}`{did_you_mean(key, _fields_at(parent))}")
            continue
        message = plain_words(item["msg"].removeprefix("Value error, "))
        nested = SUBFIELD_MESSAGE.match(message)
        if nested:  # a section validator that names one of its own fields
            field, message = f"{field}.{nested.group(1)}", nested.group(2)
            item = {**item, "input": None}
        if item["type"] == "missing":
            messages.append(f"recipe field `{field}` is required")
        elif field:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
            messages.append(f"recipe field `{field}`: {message}{shown}")
        else:
            messages.append(message)
    return "; ".join(messages)


PYDANTIC_WORDS = [
    (re.compile(r"a valid dictionary( or instance of \w+)?"), "a mapping (key: value lines)"),
    (re.compile(r"a valid list"), "a list"),
    (re.compile(r"a valid string"), "text"),
    (re.compile(r"a valid integer"), "a whole number"),
    (re.compile(r"a valid number"), "a number"),
    (re.compile(r"a valid boolean"), "true or false"),
    (re.compile(r"Input should be"), "expected"),
]


def plain_words(message: str) -> str:
    """pydantic's wording without its class names ("an instance of DataSection" → "a mapping")."""
    for pattern, words in PYDANTIC_WORDS:
        message = pattern.sub(words, message)
    return message


ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in string values, so recipes can point at data folders."""
    import os

    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise LlmkitError(f"recipe field `{where}`: environment variable `{name}` is not set")
        return default

    return ENV_PATTERN.sub(substitute, value)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge, override and validate a recipe. Raises LlmkitError with a one-line message."""
    chain: list[Path] = []
    content = expand_env(apply_overrides(resolve_extends(Path(path), chain=chain), overrides or []))
    recipe = recipe_from_mapping(locate_data_files(content, Path(path).resolve().parent))
    recipe._sources = tuple(chain)
    return recipe


def locate_data_files(content: dict[str, Any], recipe_dir: Path) -> dict[str, Any]:
    """Relative `data.train`/`data.eval` paths are read from the working folder, like any command line path;
    one that is not there but sits beside the recipe is taken from there (shipped recipes run from anywhere)."""
    data = content.get("data")
    if not isinstance(data, dict):
        return content
    located = dict(data)
    for key in ("train", "eval"):
        value = expand_path(data.get(key))
        if isinstance(value, str) and value and not Path(value).is_absolute() and not Path(value).exists():
            beside = recipe_dir / value
            if beside.exists():
                located[key] = str(beside)
    return {**content, "data": located}


def recipe_from_mapping(content: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(content)
    except ValidationError as err:
        raise LlmkitError(describe_validation_error(err)) from None


def parse_expectation(bar: str) -> tuple[str, float]:
    match = EXPECT_PATTERN.match(bar)
    assert match, bar  # validated when the recipe was loaded
    return match.group(1), float(match.group(2))


def meets(value: float, bar: str) -> bool:
    op, threshold = parse_expectation(bar)
    return {
        ">=": value >= threshold,
        "<=": value <= threshold,
        ">": value > threshold,
        "<": value < threshold,
        "==": value == threshold,
    }[op]
