"""The recipe: a YAML file (read with a safe loader), optionally `extends:` another one, changed from the
command line with dotted `key=value` overrides, validated into one frozen `Recipe`.

`schema` holds the sections, `load` the reading, `training_args` the TrainingArguments checks.
"""

from llmkit.recipe.load import (
    apply_overrides,
    describe_validation_error,
    load_recipe,
    meets,
    parse_expectation,
    parse_yaml,
    recipe_from_mapping,
    resolve_extends,
)
from llmkit.recipe.schema import (
    EXPECT_PATTERN,
    DataSection,
    EarlyStoppingSection,
    GenerationSection,
    ModelSection,
    PeftSection,
    Recipe,
    TaskName,
    TokenizerSection,
    TokenizerTrainSection,
    TrainingSection,
    TuneRange,
    TuneSection,
)
from llmkit.recipe.training_args import argument_problem, training_argument_types
from llmkit.section import Section, expand_path

__all__ = [
    "EXPECT_PATTERN",
    "DataSection",
    "EarlyStoppingSection",
    "GenerationSection",
    "ModelSection",
    "PeftSection",
    "Recipe",
    "Section",
    "TaskName",
    "TokenizerSection",
    "TokenizerTrainSection",
    "TrainingSection",
    "TuneRange",
    "TuneSection",
    "apply_overrides",
    "argument_problem",
    "describe_validation_error",
    "expand_path",
    "load_recipe",
    "meets",
    "parse_expectation",
    "parse_yaml",
    "recipe_from_mapping",
    "resolve_extends",
    "training_argument_types",
]
