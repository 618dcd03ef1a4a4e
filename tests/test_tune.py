"""`llmkit tune`: the CI recipe's learning-rate search beats its poor start with pruned trials, the SQLite study
continues on a second invocation, `best.yaml` is a recipe; the space is checked against the recipe schema;
the extras stay out of `llmkit --help` (test_cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread, write_recipe

pytest.importorskip("optuna")

TINY_TUNE = REPO / "recipes" / "ci" / "tiny-tune.yaml"


def tune(*arguments: Any) -> Any:
    with one_thread():
        return invoke("tune", *arguments)


def study(folder: Path) -> Any:
    import optuna

    return optuna.load_study(study_name="llmkit", storage=f"sqlite:///{folder / 'study.db'}")


def test_tiny_tune_beats_the_poor_start_prunes_and_resumes(tmp_path: Path) -> None:
    import optuna

    from llmkit.recipe import load_recipe

    output = tmp_path / "run"
    folder = tmp_path / "run-tune"
    first = tune(TINY_TUNE, f"training.output_dir={output}", "--trials", "4")
    assert first.exit_code == 0, first.output[-3000:]
    before = {t.number: t.params for t in study(folder).trials}
    assert len(before) == 4

    second = tune(TINY_TUNE, f"training.output_dir={output}", "--trials", "7")
    assert second.exit_code == 0, second.output[-3000:]
    assert "continuing the study" in second.stdout and "3 to go" in second.stdout
    trials = study(folder).trials
    assert [t.number for t in trials] == list(range(7))
    assert {t.number: t.params for t in trials[:4]} == before  # the same study, continued, not a new one
    assert len({t.params["training.learning_rate"] for t in trials}) == 7  # no value drawn twice after resuming

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the median pruner stopped no trial"
    baseline = trials[0]
    assert baseline.params["training.learning_rate"] == pytest.approx(1e-5)  # trial 0: the recipe as written
    best = max(complete, key=lambda t: t.value)
    assert best.value >= baseline.value + 0.3, (baseline.value, best.value)
    print(
        f"tune: recipe as written {baseline.value:.3f}, best {best.value:.3f} (lr {best.params}); "
        f"{len(complete)} complete, {len(pruned)} pruned"
    )

    # each trial is a run folder; a pruned one stopped before max_steps, at the step it was pruned
    for trial in trials:
        run = folder / f"trial-{trial.number:04d}"
        assert (run / ".llmkit").is_file() and (run / "metrics.json").is_file() and (run / "config.json").is_file()
    for trial in pruned:
        state = json.loads((folder / f"trial-{trial.number:04d}" / "trainer_state.json").read_text())
        assert state["global_step"] == trial.user_attrs["pruned_at"] < 40
        assert trial.intermediate_values

    summary = json.loads((folder / "trials.json").read_text())
    assert [row["state"] for row in summary["trials"]].count("pruned") == len(pruned)
    assert (folder / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best_recipe = load_recipe(folder / "best.yaml")
    assert best_recipe.tune is None
    assert best_recipe.training.learning_rate == pytest.approx(best.params["training.learning_rate"])
    assert best_recipe.training.output_dir == str(output)
    assert "trial" in second.stdout and "pruned" in second.stdout  # the table


def space_recipe(tmp_path: Path, space: dict[str, Any]) -> Path:
    from llmkit.recipe import load_recipe

    content = load_recipe(TINY_TUNE).model_dump(mode="json")
    content["training"]["output_dir"] = str(tmp_path / "run")
    content["tune"] = {"metric": "eval_accuracy", "space": space}
    return write_recipe(tmp_path / "r.yaml", content)


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"training.learning_rat": {"low": 1e-4, "high": 1e-2}}, "`training.learning_rat` is not a recipe field"),
        ({"model.from_confg.n_layer": [1, 2]}, "`model.from_confg.n_layer` is not a recipe field"),
        ({"data.max_length.x": [1, 2]}, "`data.max_length` is a value, not a section"),
        ({"training.output_dir": ["a", "b"]}, "`training.output_dir` cannot be searched"),
        ({"training.per_device_train_batch_size": {"low": 0, "high": 8}}, "at the low end of the space"),
        ({"training.per_device_train_batch_size": {"low": 1.5, "high": 8}}, "takes whole numbers"),
    ],
)
def test_space_is_checked_against_the_schema(tmp_path: Path, space: dict[str, Any], words: str) -> None:
    result = tune(space_recipe(tmp_path, space), "--trials", "2")
    assert result.exit_code == 2, result.output
    assert words in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "run-tune").exists()


def test_a_close_typo_gets_a_suggestion(tmp_path: Path) -> None:
    result = tune(space_recipe(tmp_path, {"training.learning_rat": {"low": 1e-4, "high": 1e-2}}), "--trials", "2")
    assert "did you mean `learning_rate`" in result.stderr


def test_space_of_free_mappings_and_training_arguments_is_accepted() -> None:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.tune import parameters

    recipe = recipe_from_mapping(
        {
            "task": "clm",
            "model": {"from_config": {"model_type": "gpt2", "n_layer": 2}},
            "data": {"train": "t.txt"},
            "training": {"output_dir": "o"},
            "tune": {
                "space": {
                    "model.from_config.n_layer": {"low": 1, "high": 4},
                    "training.adam_beta2": {"low": 0.9, "high": 0.999},
                    "training.learning_rate": {"low": "1e-4", "high": 1e-2, "log": True},
                    "training.per_device_train_batch_size": [8, 16],
                }
            },
        }
    )
    kinds = {p.path: p.kind for p in parameters(recipe)}
    assert kinds == {
        "model.from_config.n_layer": "int",
        "training.adam_beta2": "float",
        "training.learning_rate": "float",
        "training.per_device_train_batch_size": "choice",
    }
    assert recipe.tune is not None and recipe.tune.goal == "minimize"  # eval_loss by default


def test_a_recipe_without_tune_section_is_refused(tmp_path: Path) -> None:
    result = tune(REPO / "recipes" / "ci" / "tiny-bert-classification.yaml", "--trials", "2")
    assert result.exit_code == 2 and "no `tune:` section" in result.stderr


def test_finetune_ignores_the_tune_section(tmp_path: Path) -> None:
    with one_thread():
        result = invoke("finetune", TINY_TUNE, f"training.output_dir={tmp_path / 'run'}", "training.max_steps=2")
    assert result.exit_code == 0, result.output[-2000:]
    assert not (tmp_path / "run-tune").exists()
    assert "tune:" in (tmp_path / "run" / "recipe.yaml").read_text()  # kept in the resolved recipe, unused


def test_a_folder_tune_did_not_make_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run-tune").mkdir()
    (tmp_path / "run-tune" / "notes.txt").write_text("mine")
    result = tune(TINY_TUNE, f"training.output_dir={tmp_path / 'run'}", "--trials", "2")
    assert result.exit_code == 2 and "did not make it" in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "run-tune").iterdir()) == ["notes.txt"]


def test_missing_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    result = tune(TINY_TUNE, f"training.output_dir={tmp_path / 'run'}", "--trials", "2")
    assert result.exit_code == 2 and "pip install 'llmkit[tune]'" in result.stderr, result.stderr


@pytest.mark.slow
def test_trials_run_over_two_processes_and_report_from_rank_0(tmp_path: Path) -> None:
    """Each trial re-launched through accelerate (2 CPU processes); rank 0 reports its evaluations to the study."""
    result = tune(TINY_TUNE, f"training.output_dir={tmp_path / 'run'}", "--trials", "2", "--num-processes", "2")
    assert result.exit_code == 0, result.output[-3000:]
    folder = tmp_path / "run-tune"
    for trial in study(folder).trials:
        facts = json.loads((folder / f"trial-{trial.number:04d}" / "run.json").read_text())
        assert facts["world_size"] == 2 and facts["processes_per_machine"] == 2
        assert sorted(trial.intermediate_values) == [10, 20, 30, 40]
