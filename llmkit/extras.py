"""Optional extras (`llmkit[export]`, `llmkit[tune]`, `llmkit[mlflow]`): a missing one is a one-line error
naming the install command, found before any work starts, instead of an ImportError deep in a run."""

from __future__ import annotations

import importlib.util

from llmkit.errors import LlmkitError

#: extra → the modules it brings (checked by name; nothing is imported here)
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "tune": ("optuna",),
    "mlflow": ("mlflow",),
}


def missing_modules(extra: str) -> list[str]:
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def require_extra(extra: str, what: str) -> None:
    """Exit 2 naming `pip install 'llmkit[extra]'` when a module of the extra is not installed."""
    missing = missing_modules(extra)
    if missing:
        raise LlmkitError(f"{what} needs {', '.join(missing)}: pip install 'llmkit[{extra}]'")
