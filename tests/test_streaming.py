"""`data.streaming: true`: clm/mlm read their training data as a stream and pack it on the fly.

What is equal to an in-memory run on the same file, and why:
- the blocks: the on-the-fly packer cuts exactly the blocks `pack` cuts, in corpus order (same tokenizer, same
  EOS rule, a document's leftover tokens start the next block, only the last partial block is dropped);
- the first batch, between two streamed runs with the same seed: the blocks are shuffled in a buffer seeded
  by `training.seed`. It is not the in-memory run's first batch: that one is drawn by the Trainer's sampler
  from all blocks, a stream's only from the blocks in its shuffle buffer;
- so the training losses differ step by step, but the same blocks are learned with the same model start, and
  the eval loss after training ends close.
Single process only here: with several, accelerate dispatches a stream's batches from process 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_errors import assert_user_error
from tests.tiny_recipe import BLOCK, clm_recipe, invoke, one_thread, write_corpus, write_jsonl, write_recipe


def recipe_of(tmp_path: Path, streaming: bool, **training: Any) -> dict[str, Any]:
    """The tiny clm recipe on a local corpus with a separate eval file (held-out rows need the whole set)."""
    train = write_corpus(tmp_path / "train.txt", lines=240, seed=0)
    evaluation = write_corpus(tmp_path / "eval.txt", lines=40, seed=1)
    content = clm_recipe(train, tmp_path / ("streamed" if streaming else "memory"), **training)
    content["data"] = {"train": str(train), "eval": str(evaluation), "max_length": BLOCK, "streaming": streaming}
    content["training"].update({"eval_strategy": "no", "save_steps": 1000})
    return content


def prepared(tmp_path: Path, streaming: bool, **training: Any) -> Any:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.run import Run

    run = Run.prepare(recipe_from_mapping(recipe_of(tmp_path, streaming, **training)))
    return run, run.features()


def test_streamed_blocks_are_the_in_memory_blocks(tmp_path: Path) -> None:
    from llmkit.streaming import is_streamed
    from llmkit.tasks.mechanisms.packing import stream_blocks

    memory_run, memory = prepared(tmp_path, streaming=False)
    streamed_run, streamed = prepared(tmp_path, streaming=True)
    assert is_streamed(streamed.train) and not is_streamed(streamed.eval)
    assert streamed_run.tokenizer.get_vocab() == memory_run.tokenizer.get_vocab()
    blocks = memory.train["input_ids"]
    shuffled = [row["input_ids"] for row in streamed.train]
    assert len(shuffled) == len(blocks) > 8
    assert sorted(shuffled) == sorted(blocks)  # the same blocks, every one
    assert shuffled != blocks  # ... in a shuffled order
    # unshuffled, the packer yields them in the order `pack` cuts them
    from llmkit.tasks.mechanisms.packing import pack, tokenize_documents

    def tokenized(run: Any) -> Any:
        return tokenize_documents(run.raw["train"], memory_run.tokenizer, run.recipe, append_eos=True)

    cut = [row["input_ids"] for row in stream_blocks(tokenized(streamed_run), BLOCK, "train")]
    assert cut == pack(tokenized(memory_run), BLOCK, "train")["input_ids"] == blocks
    assert memory.eval["input_ids"] == streamed.eval["input_ids"]  # eval data is read into memory either way


def test_the_first_batch_depends_on_the_seed_only(tmp_path: Path) -> None:
    def first_batch(seed: int) -> list[list[int]]:
        _, features = prepared(tmp_path, streaming=True, seed=seed)
        return [row["input_ids"] for row in features.train.take(8)]

    assert first_batch(7) == first_batch(7)
    assert first_batch(7) != first_batch(8)


def test_streamed_run_trains_for_max_steps_to_a_loss_close_to_in_memory(tmp_path: Path) -> None:
    losses = {}
    for streaming in (False, True):
        path = write_recipe(tmp_path / f"{streaming}.yaml", recipe_of(tmp_path, streaming, max_steps=24))
        with one_thread():
            result = invoke("pretrain", path)
        assert result.exit_code == 0, result.output
        folder = tmp_path / ("streamed" if streaming else "memory")
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == 24  # 24 steps of 8 blocks: the ~10 blocks a pass holds are read again
        losses[streaming] = json.loads((folder / "metrics.json").read_text())["eval_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=0.05), losses
    first_loss = json.loads((tmp_path / "streamed" / "trainer_state.json").read_text())["log_history"][0]["loss"]
    assert losses[True] < first_loss * 0.8  # it learned


def test_streaming_needs_max_steps(tmp_path: Path) -> None:
    content = recipe_of(tmp_path, streaming=True)
    content["training"]["max_steps"] = -1
    result = invoke("pretrain", write_recipe(tmp_path / "r.yaml", content))
    assert_user_error(result, "`training.max_steps`", "streaming")


def test_streaming_refuses_a_held_out_fraction(tmp_path: Path) -> None:
    content = recipe_of(tmp_path, streaming=True)
    del content["data"]["eval"]
    content["data"]["validation_split"] = 0.1
    result = invoke("pretrain", write_recipe(tmp_path / "r.yaml", content))
    assert_user_error(result, "`data.validation_split`", "data.eval")


def test_a_fine_tuning_task_refuses_streaming(tmp_path: Path) -> None:
    from tests.tiny_recipe import task_recipe

    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    content = task_recipe("classification", train, tmp_path / "out", data={"streaming": True})
    content["training"]["max_steps"] = 5
    result = invoke("finetune", write_recipe(tmp_path / "r.yaml", content))
    line = assert_user_error(result, "`data.streaming`", "task `classification`", "into memory")
    assert "clm" in line and "mlm" in line


def test_check_says_streaming_instead_of_whole_set_statistics(tmp_path: Path) -> None:
    result = invoke("check", write_recipe(tmp_path / "r.yaml", recipe_of(tmp_path, streaming=True)))
    assert result.exit_code == 0, result.output
    assert f"streaming: {tmp_path / 'train.txt'} is read as training consumes it" in result.output.replace("\n", " ")
    assert "tokens per row, before truncation" not in result.output
    assert "planned optimizer steps: 30 (streamed training features" in result.output
    assert "examples (tokens the model learns" in result.output


def test_mlm_streams_with_whole_word_masking(tmp_path: Path) -> None:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.run import Run
    from tests.tiny_recipe import task_recipe

    train = write_corpus(tmp_path / "train.txt", lines=120)
    content = task_recipe(
        "mlm", train, tmp_path / "out", data={"streaming": True, "max_length": BLOCK}, mlm={"whole_word_mask": True}
    )
    content["training"]["max_steps"] = 3
    run = Run.prepare(recipe_from_mapping(content))
    rows = list(run.features().train.take(4))
    assert all(len(row["input_ids"]) == len(row["offset_mapping"]) == BLOCK for row in rows)
    batch = run.task.collator(run.recipe, run.tokenizer)(rows)
    assert batch["input_ids"].shape == (4, BLOCK) and (batch["labels"] != -100).any()


def test_streamed_documents_packing_carries_document_starts(tmp_path: Path) -> None:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.run import Run

    content = recipe_of(tmp_path, streaming=True)
    content["data"]["packing"] = "documents"
    run = Run.prepare(recipe_from_mapping(content))
    memory = Run.prepare(recipe_from_mapping({**content, "data": {**content["data"], "streaming": False}}))
    streamed = sorted((row["input_ids"], row["document_starts"]) for row in run.features().train)
    rows = memory.features().train
    assert streamed == sorted(zip(rows["input_ids"], rows["document_starts"], strict=True))
    batch = run.task.collator(run.recipe, run.tokenizer)(list(run.features().train.take(2)))
    assert batch["input_ids"].shape == (2, BLOCK) and batch["attention_mask"].ndim == 4
