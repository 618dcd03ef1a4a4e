"""The recipe: a typed, validated, frozen description of one run.

A recipe is a YAML file (read with a safe loader), optionally `extends:` another one, and can be changed
from the command line with dotted `key=value` overrides. Everything downstream receives the `Recipe`
object unchanged; no code reads raw dictionaries. Errors name the recipe field and what was expected.
No torch/transformers import at module level: `llmkit --help` must stay fast.
"""

from __future__ import annotations

import functools
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from llmkit.errors import LlmkitError, did_you_mean
from llmkit.tasks import TASKS

#: `task:` names, from the registry (a new task file adds its own)
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
LORA_LEARNING_RATE = 1e-3
SUBFIELD_MESSAGE = re.compile(r"^field `([\w.]+)`: (.*)$", re.DOTALL)
FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")
EXPECT_PATTERN = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9.eE+-]+)\s*$")


UNSET_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_path(value: Any) -> Any:
    """`~` and `$VAR` in a path field, expanded once when the recipe is validated, and `a/b/..` folded to `a`:
    every writer and reader (checkpoints, TensorBoard, the final model, the data loader, the safety checks)
    then sees the same folder."""
    if not isinstance(value, str) or not value.strip():
        return value
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = UNSET_VARIABLE.search(expanded)
    if unset:
        raise ValueError(f"environment variable `{unset.group(1) or unset.group(2)}` is not set")
    return os.path.normpath(expanded) if "/" in expanded or expanded in (".", "..") else expanded


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    name_or_path: str | None = Field(None, description="Hub id or local folder of a pretrained checkpoint.")
    from_config: dict[str, Any] | None = Field(
        None, description="Build an untrained model instead: {model_type: gpt2, n_layer: 2, ...}."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint (off by default).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype when loading; null keeps float32."
    )
    attn_implementation: str | None = Field(
        None, description="Attention kernel (eager, sdpa, flash_attention_2); null picks sdpa where supported."
    )

    expand_paths = field_validator("name_or_path", mode="before")(expand_path)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of `model.name_or_path` or `model.from_config`")
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("`model.from_config` needs a `model_type` (e.g. gpt2, bert)")
        return self


class TokenizerTrainSection(Section):
    kind: Literal["bpe", "wordpiece"] = Field(description="bpe (GPT-2 style, byte level) or wordpiece (BERT style).")
    vocab_size: int = Field(8000, ge=64, description="Vocabulary size of the trained tokenizer.")
    min_frequency: int = Field(2, ge=1, description="Minimum count for a merge / word piece.")


class TokenizerSection(Section):
    name_or_path: str | None = Field(None, description="Tokenizer hub id or folder; defaults to the model's.")
    train: TokenizerTrainSection | None = Field(None, description="Train a new tokenizer on data.train's text.")

    expand_paths = field_validator("name_or_path", mode="before")(expand_path)

    @model_validator(mode="after")
    def _not_both(self) -> TokenizerSection:
        if self.name_or_path and self.train:
            raise ValueError("set `tokenizer.name_or_path` or `tokenizer.train`, not both")
        return self


class DataSection(Section):
    train: str = Field(
        min_length=1, description="Hub dataset id, or a local file/folder (.txt .csv .tsv .json .jsonl .parquet)."
    )
    eval: str | None = Field(None, description="Eval split name (hub) or file; or use validation_split.")
    config_name: str | None = Field(None, description="Hub dataset configuration (e.g. sst2 for glue).")
    train_split: str = Field("train", description="Split of a hub dataset (or folder) to train on.")
    validation_split: float | None = Field(
        None, gt=0, lt=1, description="Fraction of train held out for eval when there is no eval set."
    )
    columns: dict[str, str] = Field(default_factory=dict, description="Task roles → dataset column names.")
    max_length: int | None = Field(
        None, ge=8, description="Tokens per example (block size when packing); unset: the model's limit, at most 512."
    )
    packing: bool = Field(True, description="clm/mlm: concatenate documents into full blocks (no padding).")
    max_train_samples: int | None = Field(None, ge=1, description="Keep only the first N training rows.")
    max_eval_samples: int | None = Field(None, ge=1, description="Keep only the first N eval rows.")
    num_proc: int | None = Field(None, ge=1, description="Processes for tokenization (default: 1).")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="mlm: fraction of tokens masked.")
    whole_word_mask: bool = Field(False, description="mlm: mask all pieces of a word together.")
    prompt_separator: str | None = Field(
        None, description="Text between prompt and target (default: \\nTL;DR: for summarization, \\nAnswer: for QA)."
    )
    max_target_length: int = Field(128, ge=1, description="Summarization/generative QA: tokens kept of the target.")
    doc_stride: int | None = Field(
        None, ge=1, description="Extractive QA: overlap between windows of a long context (unset: max_length / 4)."
    )
    max_answer_length: int = Field(30, ge=1, description="Extractive QA: longest answer span in tokens.")
    n_best_size: int = Field(20, ge=1, description="Extractive QA: start/end candidates considered.")
    version_2_with_negative: bool = Field(
        False, description="QA: some questions have no answer (SQuAD v2); on by itself when eval data has some."
    )
    qa_mode: Literal["auto", "extractive", "generative"] = Field(
        "auto",
        description="QA: extractive spans (encoders) or generated answers (decoders, encoder-decoders); auto picks.",
    )
    null_score_diff_threshold: float = Field(0.0, description="SQuAD v2: predict no answer above this margin.")

    expand_paths = field_validator("train", "eval", mode="before")(expand_path)

    @field_validator("columns")
    @classmethod
    def _columns_are_names(cls, value: dict[str, str]) -> dict[str, str]:
        for role, column in value.items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"column for role `{role}` must be a column name")
        return value

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataSection:
        if self.eval is not None and self.validation_split is not None:
            raise ValueError("set `data.eval` or `data.validation_split`, not both")
        return self


class EarlyStoppingSection(Section):
    """llmkit's own key inside `training:` (never passed to TrainingArguments): stop when the eval metric
    has not improved for `patience` evaluations, and keep the best checkpoint."""

    patience: int = Field(ge=1, description="Evaluations without improvement before training stops.")
    metric: str = Field("eval_loss", description="Eval metric as logged (eval_loss, eval_accuracy, ...).")
    threshold: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")

    @field_validator("metric")
    @classmethod
    def _an_eval_metric(cls, value: str) -> str:
        if not value.startswith("eval_"):
            raise ValueError(f"name an eval metric as the Trainer logs it, e.g. eval_loss or eval_accuracy ({value!r})")
        return value


class TrainingSection(BaseModel):
    """Hugging Face `TrainingArguments` fields; the common ones are typed here, the rest are checked by name."""

    model_config = ConfigDict(extra="allow", frozen=True)

    output_dir: str = Field(description="Run folder: model, checkpoints, metrics, logs.")
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1: num_train_epochs decides.")

    @field_validator("max_steps")
    @classmethod
    def _steps_to_take(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 steps trains nothing: give a positive number, or -1 to train num_train_epochs")
        return value

    # Above 1e3 no optimizer converges: such a value is a typo (1e30, .inf), not a choice.
    learning_rate: float = Field(5e-5, gt=0, le=1e3, allow_inf_nan=False)
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: float = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(42, ge=0)
    logging_steps: float = Field(10, gt=0)
    early_stopping: EarlyStoppingSection | None = Field(
        None, description="Stop when the eval metric stops improving: {patience: N, metric: eval_loss}."
    )

    expand_paths = field_validator("output_dir", mode="before")(expand_path)

    @field_validator("output_dir")
    @classmethod
    def _names_a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder (it is empty)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _numbers_in_e_notation(cls, data: Any) -> Any:
        """`adam_epsilon: 1e-8` is a string to YAML 1.1; read it as the float the field is typed as."""
        if not isinstance(data, dict):
            return data
        extra = {k: v for k, v in data.items() if k not in cls.model_fields and isinstance(v, str)}
        if not any(FLOAT_PATTERN.fullmatch(v) for v in extra.values()):
            return data
        types = training_argument_types()
        floats = {k for k in extra if float in (types.get(k), *typing.get_args(types.get(k)))}
        return {k: float(v) if k in floats and FLOAT_PATTERN.fullmatch(v) else v for k, v in data.items()}

    @model_validator(mode="after")
    def _known_arguments(self) -> TrainingSection:
        extra = self.model_extra or {}
        if not extra:
            return self
        types = training_argument_types()
        for key, value in extra.items():
            if key not in types:
                raise ValueError(f"field `{key}`: not a TrainingArguments field{did_you_mean(key, types)}")
            problem = argument_problem(key, value, types[key])
            if problem:
                raise ValueError(f"field `{key}`: {problem}")
        return self

    def arguments(self) -> dict[str, Any]:
        """Everything set here, as TrainingArguments keyword arguments (llmkit's own keys left out)."""
        return self.model_dump(exclude={"early_stopping"})


class PeftSection(Section):
    method: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["auto"] | list[str] = Field("auto", description="auto picks per architecture.")
    modules_to_save: list[str] | None = Field(None, description="Extra modules trained in full (task heads are).")


class GenerationSection(Section):
    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    no_repeat_ngram_size: int = Field(0, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1, description="Prompts generated together (left-padded).")


class TuneRange(Section):
    """A numeric search range; ints when both bounds are whole numbers and the field is an int."""

    low: int | float
    high: int | float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")
    step: int | float | None = Field(None, gt=0, description="Quantize to multiples of this step.")

    @model_validator(mode="after")
    def _ordered(self) -> TuneRange:
        if not self.low < self.high:
            raise ValueError(f"`low` ({self.low}) must be less than `high` ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("`log: true` needs `low` > 0")
        return self


class TunePrunerSection(Section):
    kind: Literal["median", "none"] = Field("median", description="median: stop trials below the running median.")
    startup_trials: int = Field(2, ge=0, description="Trials that always run to the end before pruning starts.")
    warmup_steps: int = Field(0, ge=0, description="Steps of a trial before it may be pruned.")


class TuneSection(Section):
    """`llmkit tune`: what to optimise and over which recipe fields (pretrain/finetune ignore it)."""

    metric: str = Field("eval_loss", description="Final eval metric to optimise (eval_loss, eval_accuracy, ...).")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Unset: minimize for losses and perplexity, maximize for anything else."
    )
    space: dict[str, TuneRange | list[Any]] = Field(
        min_length=1, description="Dotted recipe field → {low, high, log} or a list of choices."
    )
    pruner: TunePrunerSection = Field(default_factory=TunePrunerSection)
    output_dir: str | None = Field(None, description="Study and trial runs (default: <training.output_dir>-tune).")

    expand_paths = field_validator("output_dir", mode="before")(expand_path)

    @field_validator("space")
    @classmethod
    def _choices_not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path, choices in value.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"`{path}`: the list of choices is empty")
        return value

    @property
    def goal(self) -> Literal["minimize", "maximize"]:
        if self.direction is not None:
            return self.direction
        return "minimize" if self.metric.endswith(("loss", "perplexity")) else "maximize"


class Recipe(Section):
    task: TaskName
    model: ModelSection
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    data: DataSection
    training: TrainingSection
    peft: PeftSection | None = None
    generation: GenerationSection = Field(default_factory=GenerationSection)
    expect: dict[str, str] = Field(default_factory=dict, description='Metric bars, e.g. {eval_accuracy: ">= 0.8"}.')
    tune: TuneSection | None = Field(None, description="Search space for `llmkit tune`; training ignores it.")
    #: the recipe file and the files it extends (set by `load_recipe`): a run never deletes them
    _sources: tuple[Path, ...] = PrivateAttr(default=())
    _defaults_applied: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sources(self) -> tuple[Path, ...]:
        return self._sources

    def __eq__(self, other: object) -> bool:
        """Two recipes are equal when they describe the same run, wherever they were read from."""
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # sections hold mappings

    @model_validator(mode="after")
    def _lora_learning_rate(self) -> Recipe:
        """LoRA trains a few new weights from zero: at full fine-tuning's 5e-5 it barely moves."""
        if self.peft is not None and "learning_rate" not in self.training.model_fields_set:
            training = self.training.model_copy(update={"learning_rate": LORA_LEARNING_RATE})
            training.model_fields_set.add("learning_rate")
            object.__setattr__(self, "training", training)
            applied = f"training.learning_rate: {LORA_LEARNING_RATE:g} (the LoRA default)"
            self._defaults_applied = (*self._defaults_applied, applied)
        return self

    @property
    def defaults_applied(self) -> tuple[str, ...]:
        """Defaults chosen for this recipe because of its other settings (said once at the start of a run)."""
        return self._defaults_applied

    @field_validator("expect")
    @classmethod
    def _expect_format(cls, value: dict[str, str]) -> dict[str, str]:
        for metric, bar in value.items():
            if not EXPECT_PATTERN.match(str(bar)):
                raise ValueError(f'`{metric}: {bar}` should look like ">= 0.85" (one of >= <= > < ==, a number)')
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


@functools.cache
def training_argument_types() -> dict[str, Any]:
    """TrainingArguments fields → their type hints, so a recipe's extra `training:` keys are checked by type
    when the recipe loads instead of failing later inside transformers with a message that names no field."""
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


# --------------------------------------------------------------------------- loading


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
