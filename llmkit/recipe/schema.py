"""The recipe schema: typed, validated, frozen sections that describe one run.

Everything downstream receives the `Recipe` object unchanged; no code reads raw dictionaries. A task's own
options are the section named after it (`qa:`, `mlm:`, ...), declared by the task itself (`options_class`).
No torch/transformers import at module level: `llmkit --help` must stay fast.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, field_validator, model_validator

from llmkit.errors import did_you_mean
from llmkit.recipe.training_args import argument_problem, training_argument_types
from llmkit.section import Section, expand_path
from llmkit.tasks import TASKS

#: `task:` names, from the registry (a new task file adds its own)
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
LORA_LEARNING_RATE = 1e-3
FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")
EXPECT_PATTERN = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9.eE+-]+)\s*$")


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
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Task roles → dataset column names (a list of columns for a list role, e.g. choices).",
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per example (block size when packing); unset: the model's limit, at most 512."
    )
    packing: bool | Literal["documents"] | None = Field(
        None,
        description="true: several examples (fine-tuning) or documents (clm/mlm) per row, no padding; `documents`: "
        "clm/mlm blocks whose documents do not attend to each other; false: one example per row, padded; "
        "unset: the task's default (clm/mlm pack, fine-tuning tasks pad).",
    )
    streaming: bool = Field(
        False,
        description="Read the training data as a stream (clm/mlm), packed into blocks as it trains: memory stays "
        "flat for a corpus larger than RAM; needs training.max_steps. Eval data is still read into memory.",
    )
    max_train_samples: int | None = Field(None, ge=1, description="Keep only the first N training rows.")
    max_eval_samples: int | None = Field(None, ge=1, description="Keep only the first N eval rows.")
    num_proc: int | None = Field(None, ge=1, description="Processes for tokenization (default: 1).")
    expand_paths = field_validator("train", "eval", mode="before")(expand_path)

    @model_validator(mode="before")
    @classmethod
    def _task_options_moved(cls, data: Any) -> Any:
        """A task's own option written under `data:` (where it lived before tasks had sections): say where."""
        if isinstance(data, dict):
            for key in data:
                home = task_option_home(str(key))
                if home and key not in cls.model_fields:
                    raise ValueError(f"field `{key}`: a task option; write it in the task's section as `{home}`")
        return data

    @field_validator("columns")
    @classmethod
    def _columns_are_names(cls, value: dict[str, str]) -> dict[str, str]:
        for role, column in value.items():
            names = column if isinstance(column, list) else [column]
            if not names or not all(isinstance(name, str) and name for name in names):
                raise ValueError(f"column for role `{role}` must be a column name (or a list of them)")
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


class RecipeBase(Section):
    """The sections every recipe has; `Recipe` adds one optional section per task that has options."""

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

    @property
    def options(self) -> Any:
        """The options of the recipe's task: its section as written, or the task's defaults."""
        section = getattr(self, self.task, None)
        options_class = TASKS[self.task].options_class
        return section if section is not None else (options_class() if options_class else None)

    def __eq__(self, other: object) -> bool:
        """Two recipes are equal when they describe the same run, wherever they were read from."""
        return isinstance(other, RecipeBase) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # sections hold mappings

    @model_validator(mode="after")
    def _options_of_this_task(self) -> RecipeBase:
        for name, task in TASKS.items():
            if task.options_class is not None and name != self.task and getattr(self, name, None) is not None:
                raise ValueError(
                    f"section `{name}:` holds options of task `{name}`, but this recipe's task is `{self.task}`"
                )
        return self

    @model_validator(mode="after")
    def _lora_learning_rate(self) -> RecipeBase:
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


def task_option_home(key: str) -> str | None:
    """`data.doc_stride` → `qa.doc_stride`; `data.mlm_probability` → `mlm.probability` (None: not an option)."""
    for name, task in TASKS.items():
        fields = task.options_class.model_fields if task.options_class is not None else {}
        for candidate in (key, key.removeprefix(f"{name}_")):
            if candidate in fields:
                return f"{name}.{candidate}"
    return None


def _task_sections() -> dict[str, Any]:
    return {
        name: (task.options_class | None, Field(None, description=f"Options of task `{name}`."))
        for name, task in TASKS.items()
        if task.options_class is not None
    }


#: the recipe of one run: the common sections plus an optional options section per task (`qa:`, `mlm:` ...)
Recipe = create_model("Recipe", __base__=RecipeBase, __doc__=RecipeBase.__doc__, **_task_sections())
