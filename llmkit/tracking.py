"""Experiment tracking (`training.report_to: mlflow` / `wandb`): one tracked run per llmkit run.

The Trainer's own integrations log TrainingArguments and the metrics of every logging step. llmkit adds
what they cannot know: the resolved recipe (flattened, `recipe.training.learning_rate`), the final
metrics (task post-processing such as QA exact match or perplexity comes after the Trainer's last log),
and the run folder's small artifacts (model card, metrics.json, recipe.yaml, run.json, loss.png,
predictions.jsonl), never the weights.

MLflow: llmkit starts the run before training, so the Trainer's MLflowCallback logs into it instead of
opening (and closing, at the end of training) a run of its own — otherwise the final evaluation would land
in a second, stray run. The run is ended after the run folder is written: FINISHED, or FAILED/KILLED.
Weights & Biases: the Trainer's WandbCallback opens the run (`WANDB_MODE=offline` keeps it local); llmkit
adds the recipe to its config, the final metrics to its summary, the artifacts, and finishes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: files of a run folder that are logged as artifacts (the weights are not)
ARTIFACTS = ("README.md", "metrics.json", "recipe.yaml", "run.json", "loss.png", "predictions.jsonl")


def flatten(content: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and scalars as values (`None` → "null", as the YAML says)."""
    flat: dict[str, Any] = {}
    if isinstance(content, dict):
        for key, value in content.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: "null" if content is None else content}


def recipe_params(recipe: Any) -> dict[str, str]:
    """The resolved recipe as tracker parameters, values as text (MLflow stores them as text anyway)."""
    return {f"recipe.{key}": str(value) for key, value in flatten(recipe.model_dump(mode="json")).items()}


def integrations(args: Any) -> set[str]:
    return {name for name in (args.report_to or []) if name in ("mlflow", "wandb")}


def callback(recipe: Any) -> Any:
    """A TrainerCallback that opens the MLflow run before the Trainer's MLflowCallback looks for one."""
    from transformers import TrainerCallback

    class TrackRun(TrainerCallback):
        def __init__(self) -> None:
            self.recipe = recipe
            self.mlflow_run: str | None = None

        def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if "mlflow" not in integrations(args) or not state.is_world_process_zero or self.mlflow_run:
                return
            import os

            import mlflow

            if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
                mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
            if mlflow.active_run() is None:
                name = args.run_name if args.run_name and args.run_name != args.output_dir else None
                run = mlflow.start_run(run_name=name or Path(recipe.training.output_dir).name)
                self.mlflow_run = run.info.run_id
                mlflow.set_tags({"llmkit.task": recipe.task, "llmkit.output_dir": str(recipe.training.output_dir)})

    return TrackRun()


def _tracker(trainer: Any) -> Any:
    return next((c for c in trainer.callback_handler.callbacks if hasattr(c, "mlflow_run")), None)


def finish(trainer: Any, folder: Path, metrics: dict[str, Any]) -> None:
    """After the run folder is written (main process): recipe, final metrics and artifacts; end the runs."""
    from llmkit.console import say

    wanted = integrations(trainer.args)
    if not wanted or not trainer.is_world_process_zero():
        return
    tracker = _tracker(trainer)
    recipe = tracker.recipe if tracker is not None else None
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    files = [folder / name for name in ARTIFACTS if (folder / name).is_file()]
    if "mlflow" in wanted and tracker is not None and tracker.mlflow_run is not None:
        try:
            _finish_mlflow(tracker, recipe, final, files, trainer.state.global_step)
        except Exception as err:  # the model is trained and written: a tracking server's hiccup must not undo it
            say(f"warning: could not log the run to MLflow: {str(err).splitlines()[0][:200]}")
    if "wandb" in wanted:
        try:
            _finish_wandb(recipe, final, files)
        except Exception as err:
            say(f"warning: could not log the run to Weights & Biases: {str(err).splitlines()[0][:200]}")


def _finish_mlflow(tracker: Any, recipe: Any, final: dict[str, float], files: list[Path], step: int) -> None:
    import mlflow

    from llmkit.console import say

    client = mlflow.tracking.MlflowClient()
    run_id = tracker.mlflow_run
    if recipe is not None:
        params = recipe_params(recipe)
        items = list(params.items())
        for first in range(0, len(items), 100):
            mlflow.log_params(dict(items[first : first + 100]), run_id=run_id)
    import math

    finite = {k: v for k, v in final.items() if math.isfinite(v)}
    if finite:
        mlflow.log_metrics(finite, step=step, run_id=run_id)
    for path in files:
        client.log_artifact(run_id, str(path))
    if hasattr(mlflow, "flush_async_logging"):
        mlflow.flush_async_logging()
    _end_mlflow_run(tracker)
    say(f"MLflow run {run_id}: recipe, metrics and {len(files)} artifact(s) logged to {mlflow.get_tracking_uri()}")


def _end_mlflow_run(tracker: Any, status: str = "FINISHED") -> None:
    """End the tracked run: through the fluent API when it is the active run, else through the client."""
    import mlflow

    run_id = tracker.mlflow_run
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status=status)
    else:
        mlflow.tracking.MlflowClient().set_terminated(run_id, status=status)
    tracker.mlflow_run = None


def _finish_wandb(recipe: Any, final: dict[str, float], files: list[Path]) -> None:
    import wandb

    run = wandb.run
    if run is None:
        return
    if recipe is not None:
        run.config.update(recipe_params(recipe), allow_val_change=True)
    run.summary.update(final)
    artifact = wandb.Artifact(name=f"run-folder-{run.id}", type="run-folder")
    for path in files:
        artifact.add_file(str(path))
    run.log_artifact(artifact)
    wandb.finish()


def abandon(trainer: Any, status: str = "FAILED") -> None:
    """A run that failed or was interrupted: its tracked run ends with that status instead of staying open."""
    try:
        wanted = integrations(trainer.args)
        if "mlflow" in wanted:
            tracker = _tracker(trainer)
            if tracker is not None and tracker.mlflow_run is not None:
                _end_mlflow_run(tracker, status)
        if "wandb" in wanted:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1)
    except Exception:  # ending a tracked run is best effort; the run's own error is what the user must see
        pass
