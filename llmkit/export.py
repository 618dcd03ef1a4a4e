"""`llmkit export RUN_DIR OUT_DIR --format onnx`: an ONNX model with proven parity, and predict on it.

The trained model (a LoRA run merged first) is exported with `torch.onnx` (the torch.export-based exporter,
dynamic batch and sequence axes). Parity is part of the command: PyTorch and ONNX Runtime run on real
inputs, the run's own eval data preprocessed as in training, and the export fails (exit 1, nothing written)
when an output differs by more than the tolerance. `export.json` holds the figures: max abs difference,
argmax agreement (and agreement with the gold labels where the task has them), latency of both runtimes
on CPU at batch 1 and 32, sizes, and for `--quantize int8` (onnxruntime's dynamic quantization) the
quantized model's own agreement.

What is exported is the model head, not the task: `HEADS` maps the task's Auto class to the graph's outputs
and how they are compared, so a task with another head (token classification, multiple choice) is one
entry. Causal LMs are exported without a KV cache: the graph gives the logits of a full sequence, and
`predict` on an export generates greedily by running the whole sequence again for each new token.

OUT_DIR holds `model.onnx` (and `model.int8.onnx`), the tokenizer, `config.json` (label names, special
ids), the run's `recipe.yaml` (task, columns, lengths, generation settings) and `export.json`;
`llmkit predict OUT_DIR` then runs the graph with onnxruntime (no PyTorch model is built) through the task's
own predict code, so the records are the same as for the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.pipeline import Setup

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export.json"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_SAMPLES = 200
LABEL_KEYS = ("labels", "label", "start_positions", "end_positions")


class ParityFailed(LlmkitError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance: the export is not written."""

    exit_code = 1


class ExportFailed(LlmkitError):
    """The exporter could not turn the model into a graph (a limitation, not the user's input)."""

    exit_code = 1


@dataclass(frozen=True)
class Head:
    """How a model head is exported and checked."""

    #: the model output fields that become the graph's outputs
    outputs: tuple[str, ...]
    #: the graph takes `position_ids` (decoders: left-padded generation needs them)
    position_ids: bool = False
    #: outputs are per token: compare only the tokens the attention mask keeps
    per_token: bool = False
    #: the parity batches hold gold labels for the first output (accuracy of both runtimes)
    label_key: str | None = None
    #: predict generates text through the graph
    generates: bool = False


#: Auto class of the task's model → its head. Token classification would be
#: `Head(("logits",), per_token=True, label_key="labels")`; multiple choice `Head(("logits",), label_key="labels")`
#: (its inputs are (batch, choices, sequence): the dynamic axes come from the batch's own rank).
HEADS: dict[str, Head] = {
    "AutoModelForSequenceClassification": Head(("logits",), label_key="labels"),
    "AutoModelForQuestionAnswering": Head(("start_logits", "end_logits")),
    "AutoModelForCausalLM": Head(("logits",), position_ids=True, per_token=True, generates=True),
}


def is_export_folder(path: Path) -> bool:
    return (path / ONNX_FILE).is_file() and (path / REPORT_FILE).is_file()


def head_for(auto_class_name: str, task_name: str) -> Head:
    head = HEADS.get(auto_class_name)
    if head is None:
        supported = ", ".join(name.removeprefix("AutoModelFor") for name in HEADS)
        raise LlmkitError(
            f"`llmkit export` does not support task `{task_name}` ({auto_class_name}); it exports these heads: "
            f"{supported}"
        )
    return head


# --------------------------------------------------------------------------- the command


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
    from llmkit.run_folder import RunFolder, is_model_folder, local_inputs

    if fmt not in FORMATS:
        raise LlmkitError(f"--format {fmt}: not a supported format (supported: {', '.join(FORMATS)})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise LlmkitError(f"--quantize {quantize}: not supported (supported: {', '.join(QUANTIZATIONS)})")
    if tolerance <= 0:
        raise LlmkitError("--tolerance must be more than 0")
    if samples < 1:
        raise LlmkitError("--samples must be at least 1")
    if not (run_dir / "recipe.yaml").is_file() or not is_model_folder(run_dir):
        raise LlmkitError(f"{run_dir} is not a run folder (it needs recipe.yaml and config.json or an adapter)")
    if is_export_folder(run_dir):
        raise LlmkitError(f"{run_dir} is already an ONNX export; export the run folder it came from")
    if out_dir.resolve() == run_dir.resolve():
        raise LlmkitError("OUT_DIR must differ from RUN_DIR: exporting in place would replace the run")
    require_extra("export", "`llmkit export`")
    recipe = recipe_for_checkpoint(load_recipe(run_dir / "recipe.yaml"), run_dir)
    task, _, _ = model_side(recipe)
    head = head_for(task.auto_class_name, task.name)
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
        export_graph(graph, batches, onnx_path)
        session = open_session(onnx_path)
        parity = compare(graph, session, batches, head)
        parity["tolerance"] = tolerance
        parity["passed"] = parity["max_abs_diff"] <= tolerance
        if not parity["passed"]:
            raise ParityFailed(parity_failure(parity, out_dir))
        report: dict[str, Any] = {
            "format": "onnx",
            "task": task.name,
            "head": task.auto_class_name,
            "source": str(run_dir.resolve()),
            "merged_lora": adapters.is_adapter_folder(run_dir),
            "model_file": ONNX_FILE,
            "inputs": graph.names,
            "outputs": list(head.outputs),
            "exporter": "torch.onnx (torch.export, dynamo=True)",
            "kv_cache": False if head.generates else None,
            "generation": "greedy, the full sequence again for each new token (no KV cache)"
            if head.generates
            else None,
            "parity": parity,
        }
        sessions = {"onnxruntime": session}
        sizes = {"pytorch_parameters": parameter_bytes(model), "onnx": file_bytes(onnx_path)}
        if quantize == "int8":
            int8_path = folder.work / INT8_FILE
            quantize_int8(onnx_path, int8_path)
            sessions["onnxruntime_int8"] = open_session(int8_path)
            quantized = compare(graph, sessions["onnxruntime_int8"], batches, head)
            report["int8"] = {"model_file": INT8_FILE, "method": "onnxruntime quantize_dynamic, QInt8", **quantized}
            sizes["onnx_int8"] = file_bytes(int8_path)
        report["size_bytes"] = sizes
        report["latency_ms"] = latencies(graph, sessions, inputs)
        report["versions"] = versions()
        write_folder(folder, run_dir, run, model, report)
    except BaseException:
        folder.discard()
        raise
    folder.commit()
    return report


def parity_failure(parity: dict[str, Any], out_dir: Path) -> str:
    return (
        f"parity check failed: ONNX Runtime differs from PyTorch by up to {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}) on {parity['examples']} eval example(s), argmax agreement "
        f"{parity['argmax_agreement']:.2%}; nothing was written to {out_dir} (raise --tolerance to accept it)"
    )


# --------------------------------------------------------------------------- inputs


class EvalInputs:
    """The run's eval rows, preprocessed and collated exactly as in evaluation (labels kept aside)."""

    def __init__(self, run: Setup, model: Any, head: Head, samples: int) -> None:
        from datasets import DatasetDict

        rows = run.raw["eval"]
        rows = rows.select(range(min(samples, len(rows))))
        prepared = run.task.preprocess(run.recipe, DatasetDict({"eval": rows}), run.tokenizer)
        if prepared.eval is None or len(prepared.eval) == 0:
            raise LlmkitError("the eval data gives no examples to check the export on")
        self.features = prepared.eval
        self.collate = run.task.collator(run.recipe, run.tokenizer, model)
        self.head = head

    def batch(self, indices: list[int]) -> dict[str, Any]:
        batch = dict(self.collate([self.features[i % len(self.features)] for i in indices]))
        if self.head.position_ids and "attention_mask" in batch:
            batch["position_ids"] = positions(batch["attention_mask"])
        return batch

    def batches(self, size: int = 16) -> list[dict[str, Any]]:
        count = len(self.features)
        return [self.batch(list(range(first, min(first + size, count)))) for first in range(0, count, size)]


def positions(attention_mask: Any) -> Any:
    """Position ids as `generate` makes them: counted over real tokens, so left padding does not shift them."""
    ids = attention_mask.long().cumsum(-1) - 1
    return ids.masked_fill(attention_mask == 0, 0)


def input_names(batch: dict[str, Any], model: Any, head: Head) -> list[str]:
    """The batch's tensors that the model's forward takes (labels left out), in the batch's order."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    names = [k for k in batch if k in accepted and k not in LABEL_KEYS and hasattr(batch[k], "dtype")]
    if head.position_ids and "position_ids" not in names and "position_ids" in accepted:
        names.append("position_ids")
    return names


class Graph:
    """The model as a function of positional tensors returning the head's outputs (what gets exported)."""

    def __init__(self, model: Any, names: list[str], head: Head) -> None:
        import inspect

        import torch

        self.names = names
        self.head = head
        extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> tuple[Any, ...]:
                output = self.model(**dict(zip(names, tensors, strict=True)), **extra)
                return tuple(getattr(output, name) for name in head.outputs)

        self.module = Module().eval()

    def arguments(self, batch: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(batch[name] for name in self.names)

    def feeds(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {name: batch[name].numpy() for name in self.names}

    def torch_outputs(self, batch: dict[str, Any]) -> list[Any]:
        import torch

        with torch.no_grad():
            return [t.float().numpy() for t in self.module(*self.arguments(batch))]


def export_example(batches: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """A batch to trace with whose batch size is neither 1 nor its sequence length (both would be taken
    for constants)."""
    batch = batches[0]
    rows = len(batch[names[0]])
    sequence = batch[names[0]].shape[-1]
    take = next((n for n in (2, 3, 4) if n <= rows and n != sequence), rows)
    return {name: batch[name][:take] for name in names}


def export_graph(graph: Graph, batches: list[dict[str, Any]], path: Path) -> None:
    """torch.onnx (torch.export) with dynamic batch and sequence axes; the exporter's chatter is kept quiet."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from llmkit.console import verbose

    example = export_example(batches, graph.names)
    batch_dim, sequence_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = tuple(
        {0: batch_dim, example[name].dim() - 1: sequence_dim} if example[name].dim() > 1 else {0: batch_dim}
        for name in graph.names
    )
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as quiet:
            warnings.simplefilter("ignore")
            if not verbose():
                logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
                quiet.enter_context(contextlib.redirect_stdout(sink))
                quiet.enter_context(contextlib.redirect_stderr(sink))
            torch.onnx.export(
                graph.module,
                graph.arguments(example),
                str(path),
                input_names=graph.names,
                output_names=list(graph.head.outputs),
                dynamic_shapes=(dynamic,),
                dynamo=True,
                external_data=large(graph.module),  # protobuf files stop at 2 GB: weights beside the graph
                optimize=True,
                report=False,
            )
    except Exception as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportFailed(f"torch.onnx could not export the model: {first} (LLMKIT_DEBUG=1 -v shows why)") from err
    finally:
        graph.module.eval()  # the exporter may leave the module in training mode
    strip_metadata(path)


def strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node provenance (module paths, FX nodes): for a small model it is most of the
    file, and nothing at run time reads it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            del node.metadata_props[:]
    for info in model.graph.value_info:
        del info.metadata_props[:]
    onnx.save(model, str(path))


def large(module: Any) -> bool:
    return parameter_bytes(module) > 1_800_000_000


def open_session(path: Path) -> Any:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized on the fly."""
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)
    external = source.with_name(source.name + ".data").is_file()
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, use_external_data_format=external)


# --------------------------------------------------------------------------- parity


def compare(graph: Graph, session: Any, batches: list[dict[str, Any]], head: Head) -> dict[str, Any]:
    """Max abs difference of every output, argmax agreement, and accuracy against gold labels if any."""
    import numpy as np

    largest = 0.0
    agree = total = 0
    gold_torch = gold_onnx = gold_total = 0
    examples = 0
    for batch in batches:
        expected = graph.torch_outputs(batch)
        got = session.run(list(head.outputs), graph.feeds(batch))
        keep = batch["attention_mask"].numpy().astype(bool) if head.per_token and "attention_mask" in batch else None
        examples += len(expected[0])
        for ours, theirs in zip(expected, got, strict=True):
            theirs = np.asarray(theirs, dtype=np.float32)
            if ours.shape != theirs.shape:
                raise ExportFailed(f"the ONNX graph's output has shape {theirs.shape}, PyTorch's {ours.shape}")
            difference = np.abs(ours - theirs)
            if keep is not None:
                difference = difference[keep]
            if difference.size:
                largest = max(largest, float(difference.max()))
            same = ours.argmax(-1) == theirs.argmax(-1)
            same = same[keep] if keep is not None else same
            agree += int(same.sum())
            total += int(same.size)
        labels = batch.get(head.label_key) if head.label_key else None
        if labels is not None and expected[0].shape[-1] > 1:
            labels = labels.numpy()
            gold_torch += int((expected[0].argmax(-1) == labels).sum())
            gold_onnx += int((np.asarray(got[0]).argmax(-1) == labels).sum())
            gold_total += int(labels.size)
    result: dict[str, Any] = {
        "examples": examples,
        "max_abs_diff": largest,
        "argmax_agreement": agree / max(total, 1),
        "argmax_compared": total,
    }
    if gold_total:
        result["label_accuracy_pytorch"] = gold_torch / gold_total
        result["label_accuracy_onnx"] = gold_onnx / gold_total
    return result


# --------------------------------------------------------------------------- latency and size


def timed(function: Any, budget: float = 0.5, most: int = 50) -> float:
    """Median milliseconds of `function()` over repeats (one warm-up, at least 3, about `budget` seconds)."""
    import statistics

    function()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < budget and len(times) < most):
        begin = time.perf_counter()
        function()
        times.append((time.perf_counter() - begin) * 1000)
    return round(statistics.median(times), 3)


def latencies(graph: Graph, sessions: dict[str, Any], inputs: EvalInputs) -> dict[str, Any]:
    """Median ms per call at batch 1 and 32 (eval examples, repeated when there are fewer than 32)."""
    import torch

    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "device": "cpu"}
    for size in (1, 32):
        batch = inputs.batch(list(range(size)))
        arguments = graph.arguments(batch)
        feeds = graph.feeds(batch)

        def pytorch(arguments: tuple[Any, ...] = arguments) -> None:
            with torch.no_grad():
                graph.module(*arguments)

        row = {"pytorch": timed(pytorch), "sequence_length": int(batch[graph.names[0]].shape[-1])}
        for name, session in sessions.items():
            row[name] = timed(lambda session=session, feeds=feeds: session.run(None, feeds))
        row["speedup_onnxruntime"] = round(row["pytorch"] / max(row["onnxruntime"], 1e-9), 2)
        figures[f"batch_{size}"] = row
    return figures


def parameter_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from llmkit import __version__

    return {
        "llmkit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# --------------------------------------------------------------------------- the folder


def write_folder(folder: Any, run_dir: Path, run: Setup, model: Any, report: dict[str, Any]) -> None:
    """Tokenizer, config (label names, special ids), the run's recipe, the report and a short card."""
    folder.save_pretrained(model.config, run.tokenizer)  # a config saves like a model: config.json only
    folder.write_text("recipe.yaml", (run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    folder.write_json(REPORT_FILE, report)
    folder.write_text("README.md", card(report, run_dir))


def card(report: dict[str, Any], run_dir: Path) -> str:
    parity = report["parity"]
    lines = [
        f"# ONNX export of {run_dir.name}",
        "",
        f"Task `{report['task']}` ({report['head']}), exported with {report['exporter']} from `{report['source']}`"
        + (" (LoRA merged into its base first)." if report["merged_lora"] else "."),
        "",
        "## Parity with PyTorch (the run's eval data)",
        "",
        f"- examples: {parity['examples']}",
        f"- max abs difference: {parity['max_abs_diff']:.3g} (tolerance {parity['tolerance']:g})",
        f"- argmax agreement: {parity['argmax_agreement']:.2%}",
    ]
    if "int8" in report:
        int8 = report["int8"]
        lines.append(
            f"- int8 ({INT8_FILE}): argmax agreement {int8['argmax_agreement']:.2%}, "
            f"max abs difference {int8['max_abs_diff']:.3g}"
        )
    latency = report["latency_ms"]
    lines += [
        "",
        "## Latency on CPU (median ms)",
        "",
        "| batch | PyTorch | ONNX Runtime | int8 |",
        "| --- | --- | --- | --- |",
    ]
    for size in (1, 32):
        row = latency[f"batch_{size}"]
        lines.append(f"| {size} | {row['pytorch']} | {row['onnxruntime']} | {row.get('onnxruntime_int8', '-')} |")
    if report.get("generation"):
        lines += ["", f"Generation: {report['generation']}."]
    lines += ["", "Run it: `llmkit predict THIS_FOLDER --text ...` (ONNX Runtime, no PyTorch model).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- predict on an export


def load_onnx_model(folder: Path, run: Setup) -> OnnxModel:
    """The export in `folder` as the model `predict` hands to the task (onnxruntime underneath)."""
    from llmkit.extras import require_extra

    require_extra("export", f"`llmkit predict` on the ONNX export {folder}")
    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    return OnnxModel(folder / report.get("model_file", ONNX_FILE), run.config, head_for(report["head"], run.task.name))


class OnnxModel:
    """An ONNX Runtime session behind the few parts of a transformers model that the tasks' predict code
    uses: called with tensors, it returns an object with the head's outputs; `generate` is greedy."""

    def __init__(self, path: Path, config: Any, head: Head) -> None:
        import torch

        self.session = open_session(path)
        self.names = [node.name for node in self.session.get_inputs()]
        self.config = config
        self.head = head
        self.device = torch.device("cpu")
        self.training = False

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    def parameters(self) -> Any:
        import torch

        yield torch.zeros(0)  # where generation code looks for the model's device

    def run(self, inputs: dict[str, Any]) -> list[Any]:
        feeds = {}
        for name in self.names:
            value = inputs.get(name)
            if value is None and name == "position_ids":
                value = positions(inputs["attention_mask"])
            if value is None:
                raise LlmkitError(f"the ONNX model needs `{name}`, which the tokenizer did not give")
            feeds[name] = value.cpu().numpy() if hasattr(value, "cpu") else value
        return self.session.run(list(self.head.outputs), feeds)

    def __call__(self, **inputs: Any) -> Any:
        from types import SimpleNamespace

        import torch

        outputs = self.run(inputs)
        return SimpleNamespace(
            **{name: torch.from_numpy(o) for name, o in zip(self.head.outputs, outputs, strict=True)}
        )

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        pad_token_id: int | None = None,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        do_sample: bool = False,
        no_repeat_ngram_size: int = 0,
        repetition_penalty: float | None = None,
        **ignored: Any,
    ) -> Any:
        """Greedy decoding, the whole sequence each step (the graph has no KV cache), stopping at EOS."""
        import torch

        if not self.head.generates:
            raise LlmkitError("this ONNX export does not generate text")
        unsupported = {
            "generation.num_beams": num_beams != 1,
            "generation.do_sample": bool(do_sample),
            "generation.no_repeat_ngram_size": bool(no_repeat_ngram_size),
            "generation.repetition_penalty": repetition_penalty not in (None, 1.0),
        }
        named = [name for name, used in unsupported.items() if used]
        if named:
            raise LlmkitError(
                f"predict on an ONNX export decodes greedily; recipe field `{named[0]}` asks for more "
                "(use the run folder for it)"
            )
        eos = getattr(self.config, "eos_token_id", None)
        pad = pad_token_id if pad_token_id is not None else (eos if eos is not None else 0)
        ids, mask = input_ids.clone(), attention_mask.clone()
        done = torch.zeros(len(ids), dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits = torch.from_numpy(self.run({"input_ids": ids, "attention_mask": mask})[0])
            token = logits[:, -1, :].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            if eos is not None:
                done |= token == eos
            if bool(done.all()):
                break
        return ids
