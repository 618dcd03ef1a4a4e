"""`llmkit merge`: a LoRA run folder → a plain model folder (merged weights, tokenizer, recipe, model card),
written beside OUT_DIR and moved in place once complete."""

from __future__ import annotations

from pathlib import Path

from llmkit import adapters, report
from llmkit.errors import LlmkitError
from llmkit.recipe import load_recipe
from llmkit.run import Run, recipe_for_checkpoint
from llmkit.run_folder import (
    ADAPTER_FILE,
    RunFolder,
    adapter_base,
    check_weights,
    is_adapter_folder,
    local_inputs,
    recipe_path,
)


def merge(adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Checked first (the adapter run, the base model, OUT_DIR), then loaded, merged and written."""
    if not is_adapter_folder(adapter_dir):
        raise LlmkitError(f"{adapter_dir} is not a LoRA run folder (no {ADAPTER_FILE})")
    recorded = recipe_path(adapter_dir)
    if out_dir.resolve() == adapter_dir.resolve():
        raise LlmkitError("OUT_DIR must differ from ADAPTER_DIR: merging in place would delete the adapter run")
    check_weights(adapter_dir, "adapter run folder")
    recipe = recipe_for_checkpoint(load_recipe(recorded), adapter_dir)
    base = Path(adapter_base(adapter_dir))
    protected = [("the adapter run", adapter_dir), *local_inputs(recipe)]
    if base.exists():
        protected.append(("the base model", base))
        check_weights(base, "base model")
    folder = RunFolder.for_output(out_dir, overwrite, protected, kind="merge")
    run = Run.for_inference(recipe)
    merged = adapters.merge(run.model())
    folder.create()
    try:
        folder.save_pretrained(merged, run.tokenizer)
        folder.copy_recipe(adapter_dir)
        folder.write_card(report.merged_card(adapter_dir, out_dir, run.recipe, type(merged).__name__))
    except BaseException:
        folder.discard()
        raise
    folder.commit()
    return out_dir
