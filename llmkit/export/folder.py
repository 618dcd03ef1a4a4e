"""The export folder: its file names, how it is recognised, and what is written into it beside the graph
(tokenizer, config, the run's recipe, `export.json` and a short card)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmkit.pipeline import Setup

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export.json"


def is_export_folder(path: Path) -> bool:
    return (path / ONNX_FILE).is_file() and (path / REPORT_FILE).is_file()


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
    return "\n".join(lines + latency_table(report["latency_ms"]) + closing(report))


def latency_table(latency: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Latency on CPU (median ms)",
        "",
        "| batch | PyTorch | ONNX Runtime | int8 |",
        "| --- | --- | --- | --- |",
    ]
    for size in (1, 32):
        row = latency[f"batch_{size}"]
        lines.append(f"| {size} | {row['pytorch']} | {row['onnxruntime']} | {row.get('onnxruntime_int8', '-')} |")
    return lines


def closing(report: dict[str, Any]) -> list[str]:
    lines = ["", f"Generation: {report['generation']}."] if report.get("generation") else []
    return [*lines, "", "Run it: `llmkit predict THIS_FOLDER --text ...` (ONNX Runtime, no PyTorch model).", ""]


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
