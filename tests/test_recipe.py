"""Recipe loading: validation messages, overrides, extends, and every shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import apply_overrides, load_recipe, meets

MINIMAL = """
task: clm
model: {from_config: {model_type: gpt2, n_layer: 1}}
tokenizer: {train: {kind: bpe, vocab_size: 500}}
data: {train: builtin:pydoc-topics, max_length: 64}
training: {output_dir: runs/x}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_recipe_gets_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.task == "clm"
    assert load_recipe(write(tmp_path, MINIMAL), ["task=mlm"]).options.probability == 0.15  # mlm's default
    assert recipe.training.learning_rate == 5e-5
    assert recipe.peft is None


def test_overrides_are_typed_and_dotted(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, MINIMAL),
        ["training.learning_rate=1e-4", "training.max_steps=7", "data.packing=false", "training.adam_epsilon=1e-6"],
    )
    assert recipe.training.learning_rate == pytest.approx(1e-4)
    assert recipe.training.max_steps == 7
    assert recipe.data.packing is False
    assert recipe.training.arguments()["adam_epsilon"] == pytest.approx(1e-6)


def test_overrides_do_not_touch_the_input_mapping() -> None:
    content = {"training": {"seed": 1}}
    assert apply_overrides(content, ["training.seed=2"]) == {"training": {"seed": 2}}
    assert content == {"training": {"seed": 1}}


@pytest.mark.parametrize("override", ["noequals", "=3", "training..seed=1", "training.seed=[unclosed"])
def test_bad_override_is_named(tmp_path: Path, override: str) -> None:
    with pytest.raises(LlmkitError, match="bad override"):
        load_recipe(write(tmp_path, MINIMAL), [override])


def test_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(LlmkitError, match=r"unknown recipe field `data.max_lenght` \(did you mean `max_length`\?\)"):
        load_recipe(write(tmp_path, MINIMAL), ["data.max_lenght=32"])


def test_unknown_training_argument_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(LlmkitError, match=r"`training.learning_rat`.*did you mean `learning_rate`"):
        load_recipe(write(tmp_path, MINIMAL), ["training.learning_rat=0.1"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("training.learning_rate=-1", "training.learning_rate"),
        ("task=mlm mlm.probability=1.5", "mlm.probability"),
        ("data.mlm_probability=0.3", "data.mlm_probability"),
        ("task=sentiment", "task"),
        ("data.max_length=abc", "data.max_length"),
    ],
)
def test_bad_values_name_their_field(tmp_path: Path, override: str, field: str) -> None:
    with pytest.raises(LlmkitError, match=f"`{field}`"):
        load_recipe(write(tmp_path, MINIMAL), override.split())


def test_extends_merges_sections(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ntraining: {seed: 7}\ndata: {max_length: 32}\n", "child.yaml")
    recipe = load_recipe(child)
    assert recipe.training.seed == 7
    assert recipe.training.output_dir == "runs/x"  # kept from the base
    assert recipe.data.max_length == 32
    assert recipe.data.train == "builtin:pydoc-topics"


def test_environment_variables_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_RUNS", "/tmp/somewhere")
    text = (
        "task: clm\nmodel:\n  from_config: {model_type: gpt2}\ntokenizer: {train: {kind: bpe}}\n"
        "data:\n  train: builtin:pydoc-topics\n  max_length: ${NOT_SET_VAR:-48}\n"
        "training:\n  output_dir: ${MY_RUNS}/x\n"
    )
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.training.output_dir == "/tmp/somewhere/x"
    assert recipe.data.max_length == 48


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), ["training.seed=3"])
    again = load_recipe(write(tmp_path, recipe.to_yaml(), "resolved.yaml"))
    assert again == recipe


def test_expect_bars() -> None:
    assert meets(0.9, ">= 0.85") and not meets(0.8, ">= 0.85")
    assert meets(10.0, "< 100") and not meets(100.0, "< 100")


def shipped_recipes() -> list[Path]:
    root = Path(__file__).resolve().parent.parent / "recipes"
    return sorted(root.rglob("*.yaml"))


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_recipe_validates(path: Path) -> None:
    from llmkit.tasks import TASKS

    recipe = load_recipe(path)
    assert recipe.task in TASKS
    assert recipe.training.output_dir
    for metric in recipe.expect:
        assert metric.startswith("eval_") or metric == "perplexity", metric


def defines_task(path: Path) -> bool:
    import ast

    for node in ast.parse(path.read_text()).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(getattr(target, "id", "") == "TASK" for target in targets):
            return True
    return False


def test_every_task_file_is_a_recipe_task_with_its_own_section(tmp_path: Path) -> None:
    """A file in llmkit/tasks/ defining TASK is all a task needs: `task:` accepts its name, its options are the
    section named after it, and that section is refused in another task's recipe."""
    from llmkit.recipe import Recipe
    from llmkit.tasks import TASKS

    folder = Path(__file__).resolve().parent.parent / "llmkit" / "tasks"
    files = [p for p in folder.glob("*.py") if not p.name.startswith("_") and p.stem != "base"]
    files += [p / "__init__.py" for p in folder.iterdir() if (p / "__init__.py").is_file() and p.name != "mechanisms"]
    defining = [f for f in files if defines_task(f)]
    assert len(TASKS) == len(defining), (sorted(TASKS), sorted(str(f.relative_to(folder)) for f in defining))

    def recipe_of(task: str, extra: str = "") -> Path:
        return write(tmp_path, MINIMAL.replace("task: clm", f"task: {task}") + extra)

    for name, task in TASKS.items():
        recipe = load_recipe(recipe_of(name))
        assert recipe.task == name
        if task.options_class is None:
            assert name not in Recipe.model_fields and recipe.options is None
            continue
        assert recipe.options == task.options_class()
        other = next(n for n in TASKS if n != name)
        with pytest.raises(LlmkitError, match=f"section `{name}:` holds options of task `{name}`"):
            load_recipe(recipe_of(other, f"{name}: {{}}\n"))
    with pytest.raises(LlmkitError, match="`task`"):
        load_recipe(recipe_of("no-such-task"))


def test_shipped_recipe_data_is_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes/ci/tiny-bert-classification.yaml")
    assert Path(recipe.data.train).is_file() and Path(str(recipe.data.eval)).is_file()


def test_only_float_typed_training_arguments_read_e_notation(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), ["training.run_name=1e3", "model.revision=12e45"])
    assert recipe.training.arguments()["run_name"] == "1e3"
    assert recipe.model.revision == "12e45"
