"""Packing keeps every token but the last partial block, unlike per-batch grouping."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.recipe import load_recipe


@pytest.fixture(scope="module")
def tokenizer():
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection

    texts = [f"document number {i} " + "word " * (i % 37) for i in range(3000)]
    return train_tokenizer(TokenizerTrainSection(kind="bpe", vocab_size=300), texts)


def recipe(tmp_path: Path, packing: bool = True):
    path = tmp_path / "r.yaml"
    path.write_text(
        "task: clm\nmodel: {from_config: {model_type: gpt2}}\ntokenizer: {train: {kind: bpe}}\n"
        f"data: {{train: x.txt, max_length: 32, packing: {str(packing).lower()}}}\ntraining: {{output_dir: o}}\n"
    )
    return load_recipe(path)


def test_packing_drops_at_most_one_partial_block(tmp_path: Path, tokenizer) -> None:
    from datasets import Dataset

    from llmkit.tasks.mechanisms.packing import lm_features, token_count, tokenize_documents

    texts = [f"document number {i} " + "word " * (i % 37) for i in range(2500)]  # > 2 map batches of 1000
    dataset = Dataset.from_dict({"text": texts})
    r = recipe(tmp_path)
    total = token_count(tokenize_documents(dataset, tokenizer, r, append_eos=True))
    packed = lm_features(dataset, tokenizer, r, "train", append_eos=True)
    kept = len(packed) * 32
    assert total - kept < 32
    assert all(len(row) == 32 for row in packed["input_ids"][:5])
    # one EOS after each document
    flat = [t for row in packed["input_ids"] for t in row]
    assert flat.count(tokenizer.eos_token_id) >= len(texts) - 2


def test_unpacked_rows_are_truncated(tmp_path: Path, tokenizer) -> None:
    from datasets import Dataset

    from llmkit.tasks.mechanisms.packing import lm_features

    dataset = Dataset.from_dict({"text": ["word " * 100, "short"]})
    features = lm_features(dataset, tokenizer, recipe(tmp_path, packing=False), "train", append_eos=False)
    lengths = [len(ids) for ids in features["input_ids"]]
    assert lengths[0] == 32 and lengths[1] < 32


def test_clm_collator_keeps_eos_labels_when_pad_is_eos(tokenizer) -> None:
    from llmkit.tasks.clm import PadAndLabelCollator

    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    batch = PadAndLabelCollator(tokenizer)([{"input_ids": [5, 6, eos]}, {"input_ids": [7]}])
    assert batch["labels"][0].tolist() == [5, 6, eos]  # the real EOS is learned
    assert batch["labels"][1].tolist()[1:] == [-100, -100]  # padding is not


def test_whole_word_masking_masks_all_pieces_of_a_word(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection
    from llmkit.tasks.mlm import MaskedLM

    texts = [f"unbelievable extraordinary {i} internationalization" for i in range(400)]
    tokenizer = train_tokenizer(TokenizerTrainSection(kind="wordpiece", vocab_size=120, min_frequency=1), texts)
    path = tmp_path / "r.yaml"
    path.write_text(
        "task: mlm\nmodel: {from_config: {model_type: bert}}\ntokenizer: {train: {kind: wordpiece}}\n"
        "data: {train: x.txt, max_length: 32}\nmlm: {whole_word_mask: true, probability: 0.3}\n"
        "training: {output_dir: o}\n"
    )
    recipe = load_recipe(path)
    task = MaskedLM()
    prepared = task.preprocess(recipe, DatasetDict({"train": Dataset.from_dict({"text": texts})}), tokenizer)
    batch = task.collator(recipe, tokenizer)([prepared.train[i] for i in range(32)])
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in prepared.train["input_ids"][:32]]
    masked = batch["labels"] != -100
    pieces = 0
    for row, row_tokens in enumerate(tokens):
        for position in range(1, len(row_tokens)):
            if row_tokens[position].startswith("##"):
                pieces += 1
                assert masked[row, position] == masked[row, position - 1], row_tokens[position - 1 : position + 1]
    assert pieces > 50 and masked.any()
