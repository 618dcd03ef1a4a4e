"""Experiment tracking against a real MLflow tracking server (started here on 127.0.0.1 with an SQLite backend):
one tracked run per llmkit run holding the flattened recipe, the step and final metrics and the run folder's
small artifacts (no weights); a failed run is marked FAILED. Weights & Biases in offline mode gets the same."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_recipe import clm_recipe, invoke, one_thread, write_corpus, write_recipe

STARTUP_SECONDS = 120  # the server migrates its SQLite schema at start: ~25-40 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (a free port), SQLite backend, artifacts in a temporary folder."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited ({server.returncode}): {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {STARTUP_SECONDS} s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def tiny(tmp_path: Path, report_to: str, **training: Any) -> Path:
    content = clm_recipe(
        write_corpus(tmp_path / "corpus.txt"),
        tmp_path / "run",
        max_steps=10,
        logging_steps=2,
        eval_steps=5,
        save_steps=100,
        report_to=report_to,
        **training,
    )
    return write_recipe(tmp_path / "recipe.yaml", content)


def runs_of(client: Any, output: Path) -> list[Any]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`llmkit.output_dir` = '{output}'")


@pytest.mark.integration
def test_mlflow_gets_recipe_metrics_and_artifacts(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with one_thread():
        result = invoke("pretrain", tiny(tmp_path, "mlflow"))
    assert result.exit_code == 0, result.output[-3000:]
    assert "MLflow run" in result.stdout

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = runs_of(client, tmp_path / "run")
    assert len(runs) == 1, "the final evaluation must not open a second run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["recipe.task"] == "clm"
    assert float(params["recipe.training.learning_rate"]) == pytest.approx(3e-3)
    assert params["recipe.model.from_config.n_layer"] == "2"
    assert params["recipe.data.validation_split"] == "0.1"
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    final = run.data.metrics
    for name in ("eval_loss", "perplexity", "train_loss"):
        assert final[name] == pytest.approx(written[name], rel=1e-6), name
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 5  # every logging step, in the same run
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"README.md", "metrics.json", "recipe.yaml", "loss.png", "run.json"} <= artifacts
    assert not any(name.endswith((".safetensors", ".bin", ".pt")) for name in artifacts)
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(local.read_text()) == written


@pytest.mark.integration
def test_mlflow_run_of_a_failed_training_is_marked_failed(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    recipe = tiny(tmp_path, "mlflow", eval_strategy="steps")
    with one_thread():  # a metric the evaluation does not give stops the run at its first evaluation
        result = invoke("pretrain", recipe, "training.early_stopping={patience: 1, metric: eval_accuracy}")
    assert result.exit_code == 2, result.output[-2000:]
    runs = runs_of(MlflowClient(tracking_uri=mlflow_server), tmp_path / "run")
    assert [run.info.status for run in runs] == ["FAILED"]
    assert mlflow.active_run() is None  # nothing left open for the next run in this process


def test_wandb_offline_gets_recipe_summary_and_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with one_thread():
        result = invoke("pretrain", tiny(tmp_path, "wandb"))
    assert result.exit_code == 0, result.output[-3000:]
    logs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(logs) == 1
    # wandb keeps an offline run as protobuf records; their keys and file names are stored as plain bytes
    content = Path(logs[0]).read_bytes()
    for key in (b"recipe.training.learning_rate", b"recipe.task", b"perplexity", b"run-folder-"):
        assert key in content, key
    for name in (b"metrics.json", b"recipe.yaml", b"README.md", b"loss.png"):
        assert name in content, name
    assert b"model.safetensors" not in content
