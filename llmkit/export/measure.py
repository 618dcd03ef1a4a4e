"""The figures of an export: parity with PyTorch (max abs difference, argmax agreement, gold-label accuracy),
latency of both runtimes on CPU, and sizes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.export.heads import ExportFailed

if TYPE_CHECKING:
    from llmkit.export.graph import Graph
    from llmkit.export.heads import Head
    from llmkit.export.inputs import EvalInputs


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
