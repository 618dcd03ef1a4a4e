"""The trial's side of `llmkit tune`: a TrainerCallback that reports each evaluation to the Optuna study and
stops training cleanly when the pruner says so.

It finds its trial through environment variables set by `llmkit tune` (so the same code serves a trial run
in the tuning process and one re-launched over many processes by accelerate). Only rank 0 talks to the
study; the prune decision is shared with every process so all stop at the same step. A pruned run ends like
any finished run (final model, eval, run folder) and records `pruned_at` on the trial, which `llmkit tune`
then turns into a pruned trial.
"""

from __future__ import annotations

import json
import os
from typing import Any

STORAGE_ENV = "LLMKIT_TUNE_STORAGE"
STUDY_ENV = "LLMKIT_TUNE_STUDY"
TRIAL_ENV = "LLMKIT_TUNE_TRIAL_ID"
SETTINGS_ENV = "LLMKIT_TUNE_SETTINGS"  # {"metric": ..., "pruner": {...}}


def environment(storage: str, study: str, trial_id: int, metric: str, pruner: dict[str, Any]) -> dict[str, str]:
    return {
        STORAGE_ENV: storage,
        STUDY_ENV: study,
        TRIAL_ENV: str(trial_id),
        SETTINGS_ENV: json.dumps({"metric": metric, "pruner": pruner}),
    }


def make_pruner(settings: dict[str, Any]) -> Any:
    import optuna

    if settings.get("kind", "median") == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(settings.get("startup_trials", 2)), n_warmup_steps=int(settings.get("warmup_steps", 0))
    )


def callback() -> Any:
    """The reporting callback when this run is a trial of `llmkit tune`, else None."""
    if TRIAL_ENV not in os.environ:
        return None
    from transformers import TrainerCallback

    settings = json.loads(os.environ[SETTINGS_ENV])
    metric = settings["metric"]

    class ReportToStudy(TrainerCallback):
        def __init__(self) -> None:
            self.trial: Any = None
            self.training = False
            self.pruned_at: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.training = True
            if state.is_world_process_zero:
                import optuna

                study = optuna.load_study(
                    study_name=os.environ[STUDY_ENV],
                    storage=os.environ[STORAGE_ENV],
                    pruner=make_pruner(settings["pruner"]),
                )
                self.trial = optuna.trial.Trial(study, int(os.environ[TRIAL_ENV]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.training = False

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any) -> None:
            if not self.training or self.pruned_at is not None:
                return
            prune = False
            value = metrics.get(metric)
            if self.trial is not None and isinstance(value, int | float):
                self.trial.report(float(value), state.global_step)
                prune = self.trial.should_prune()
            if shared_decision(prune, args):
                self.pruned_at = state.global_step
                control.should_training_stop = True
                if self.trial is not None:
                    self.trial.set_user_attr("pruned_at", state.global_step)
                    from llmkit.console import say

                    say(
                        f"trial pruned at step {state.global_step}: {metric} {value:.4g} is worse than the median "
                        "of the earlier trials at this step"
                    )

    return ReportToStudy()


def shared_decision(flag: bool, args: Any) -> bool:
    """Rank 0's decision, known to every process of a multi-process run."""
    if args.world_size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([int(flag)], device=args.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
