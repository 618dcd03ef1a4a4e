"""The ONNX graph: the model wrapped as a function of positional tensors, exported with torch.onnx
(torch.export, dynamic batch and sequence axes), opened with ONNX Runtime on CPU, and quantized to int8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.export.heads import ExportFailed
from llmkit.export.measure import parameter_bytes

if TYPE_CHECKING:
    from llmkit.export.heads import Head

#: protobuf files stop at 2 GB: a larger model's weights go beside the graph
EXTERNAL_DATA_BYTES = 1_800_000_000


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


def dynamic_shapes(example: dict[str, Any], names: list[str]) -> tuple[dict[int, Any], ...]:
    """Batch (first) and sequence (last) axes of each input left free; 1-d inputs have a batch axis only."""
    import torch

    batch_dim, sequence_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return tuple(
        {0: batch_dim, example[name].dim() - 1: sequence_dim} if example[name].dim() > 1 else {0: batch_dim}
        for name in names
    )


def export_graph(graph: Graph, batches: list[dict[str, Any]], path: Path) -> None:
    """torch.onnx (torch.export) with dynamic batch and sequence axes; the exporter's chatter is kept quiet."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from llmkit.console import verbose

    example = export_example(batches, graph.names)
    dynamic = dynamic_shapes(example, graph.names)
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
                external_data=parameter_bytes(graph.module) > EXTERNAL_DATA_BYTES,
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
