"""`llmkit tune RECIPE --trials N`: an Optuna search over the recipe's `tune.space`.

Each trial is an ordinary run folder (`<tune folder>/trial-0003/`) trained by the same code as `finetune`,
with the sampled values put into the recipe by their dotted paths. The study lives in SQLite
(`<tune folder>/study.db`): running the command again continues it up to N trials in all. The first trial
of a new study is the recipe as written (when its values lie in the space), so the table shows what tuning
gained. TPE sampling is seeded from `training.seed`; the median pruner stops trials whose intermediate eval
metric falls behind (reported by `tune_trial`), and they are recorded as pruned. At the end: a table of
trials, `best.yaml` (the recipe with the best values, without `tune:`), `trials.json` and `tune.png`.

The tune folder defaults to `<training.output_dir>-tune`, beside the run folder rather than inside it, so
that `llmkit finetune best.yaml` can write the final model to `training.output_dir` without having to
replace (and so delete) the study.

The parts: `command` (the command), `space` (the search space), `study` (the Optuna study and its folder),
`objective` (one trial), `summary` (the table, best.yaml, trials.json, tune.png).
"""

from llmkit.tune.command import run
from llmkit.tune.objective import Objective
from llmkit.tune.space import FIXED_FIELDS, Parameter, check_space, field_annotation, parameters, with_values
from llmkit.tune.study import STUDY_NAME, is_tune_folder, open_study, tune_folder
from llmkit.tune.summary import Outcome, summarize

__all__ = [
    "FIXED_FIELDS",
    "STUDY_NAME",
    "Objective",
    "Outcome",
    "Parameter",
    "check_space",
    "field_annotation",
    "is_tune_folder",
    "open_study",
    "parameters",
    "run",
    "summarize",
    "tune_folder",
    "with_values",
]
