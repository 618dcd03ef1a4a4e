"""The steps of `llmkit export`: check the arguments, build the model and its eval batches, export, prove
parity (nothing is written when it fails), quantize, measure, and write the staged folder in place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.export.folder import INT8_FILE, ONNX_FILE, is_export_folder, versions, write_folder
from llmkit.export.graph import Graph, export_graph, open_session, quantize_int8
from llmkit.export.heads import ParityFailed, head_of
from llmkit.export.inputs import EvalInputs, input_names
from llmkit.export.measure import compare, file_bytes, latencies, parameter_bytes

if TYPE_CHECKING:
    from llmkit.export.heads import Head

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
DEFAULT_TOLERANCE = 1e-4
DEFAULT_SAMPLES = 200
EXPORTER = "torch.onnx (torch.export, dynamo=True)"
GREEDY = "greedy, the full sequence again for each new token (no KV cache)"


def export(
    run_dir: Path,
    out_dir: Path,
    fmt: str = "onnx",
    quantize: str | None = None,
    overwrite: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = DEFAULT_SAMPLES,
) -> dict[str, Any]:
    """Export, prove parity, write OUT_DIR (staged, moved in place); returns the report."""
    from llmkit import adapters
    from llmkit.extras import require_extra
    from llmkit.pipeline import load_model, model_side, recipe_for_checkpoint, setup
    from llmkit.recipe import load_recipe
    from llmkit.run_folder import RunFolder, local_inputs

    check_arguments(fmt, quantize, tolerance, samples)
    check_folders(run_dir, out_dir)
    require_extra("export", "`llmkit export`")
    recipe = recipe_for_checkpoint(load_recipe(run_dir / "recipe.yaml"), run_dir)
    task, _, _ = model_side(recipe)
    head = head_of(task)
    protected = [("the run", run_dir), *local_inputs(recipe)]
    folder = RunFolder.for_output(out_dir, overwrite, protected, kind="export")

    run = setup(recipe, need_train=False)
    model = load_model(run)
    if adapters.is_adapter_folder(run_dir):
        model = adapters.merge(model)
    model.eval()
    inputs = EvalInputs(run, model, head, samples)
    batches = inputs.batches()
    graph = Graph(model, input_names(batches[0], model, head), head)

    folder.create()
    try:
        onnx_path = folder.work / ONNX_FILE
        session, parity = proven(graph, batches, onnx_path, tolerance, out_dir)
        report = header(task, run_dir, graph, parity, adapters.is_adapter_folder(run_dir))
        sessions = {"onnxruntime": session}
        sizes = {"pytorch_parameters": parameter_bytes(model), "onnx": file_bytes(onnx_path)}
        if quantize == "int8":
            report["int8"] = quantized(graph, batches, folder.work / INT8_FILE, sessions, sizes)
        report["size_bytes"] = sizes
        report["latency_ms"] = latencies(graph, sessions, inputs)
        report["versions"] = versions()
        write_folder(folder, run_dir, run, model, report)
    except BaseException:
        folder.discard()
        raise
    folder.commit()
    return report


def check_arguments(fmt: str, quantize: str | None, tolerance: float, samples: int) -> None:
    if fmt not in FORMATS:
        raise LlmkitError(f"--format {fmt}: not a supported format (supported: {', '.join(FORMATS)})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise LlmkitError(f"--quantize {quantize}: not supported (supported: {', '.join(QUANTIZATIONS)})")
    if tolerance <= 0:
        raise LlmkitError("--tolerance must be more than 0")
    if samples < 1:
        raise LlmkitError("--samples must be at least 1")


def check_folders(run_dir: Path, out_dir: Path) -> None:
    from llmkit.run_folder import is_model_folder

    if not (run_dir / "recipe.yaml").is_file() or not is_model_folder(run_dir):
        raise LlmkitError(f"{run_dir} is not a run folder (it needs recipe.yaml and config.json or an adapter)")
    if is_export_folder(run_dir):
        raise LlmkitError(f"{run_dir} is already an ONNX export; export the run folder it came from")
    if out_dir.resolve() == run_dir.resolve():
        raise LlmkitError("OUT_DIR must differ from RUN_DIR: exporting in place would replace the run")


def proven(
    graph: Graph, batches: list[dict[str, Any]], path: Path, tolerance: float, out_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """Export the graph to `path` and open it; its parity figures, or ParityFailed beyond the tolerance."""
    export_graph(graph, batches, path)
    session = open_session(path)
    parity = compare(graph, session, batches, graph.head)
    parity["tolerance"] = tolerance
    parity["passed"] = parity["max_abs_diff"] <= tolerance
    if not parity["passed"]:
        raise ParityFailed(parity_failure(parity, out_dir))
    return session, parity


def parity_failure(parity: dict[str, Any], out_dir: Path) -> str:
    return (
        f"parity check failed: ONNX Runtime differs from PyTorch by up to {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}) on {parity['examples']} eval example(s), argmax agreement "
        f"{parity['argmax_agreement']:.2%}; nothing was written to {out_dir} (raise --tolerance to accept it)"
    )


def header(task: Any, run_dir: Path, graph: Graph, parity: dict[str, Any], merged_lora: bool) -> dict[str, Any]:
    """The report's description of what was exported, and how."""
    head: Head = graph.head
    return {
        "format": "onnx",
        "task": task.name,
        "head": task.auto_class_name,
        "source": str(run_dir.resolve()),
        "merged_lora": merged_lora,
        "model_file": ONNX_FILE,
        "inputs": graph.names,
        "outputs": list(head.outputs),
        "exporter": EXPORTER,
        "kv_cache": False if head.generates else None,
        "generation": GREEDY if head.generates else None,
        "parity": parity,
    }


def quantized(
    graph: Graph, batches: list[dict[str, Any]], path: Path, sessions: dict[str, Any], sizes: dict[str, int]
) -> dict[str, Any]:
    """The int8 model beside the graph: its session joins `sessions`, its size `sizes`; returns its figures."""
    quantize_int8(path.with_name(ONNX_FILE), path)
    sessions["onnxruntime_int8"] = open_session(path)
    figures = compare(graph, sessions["onnxruntime_int8"], batches, graph.head)
    sizes["onnx_int8"] = file_bytes(path)
    return {"model_file": INT8_FILE, "method": "onnxruntime quantize_dynamic, QInt8", **figures}
