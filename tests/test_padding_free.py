"""Padding-free fine-tuning and document-isolated LM packing: packed rows give the logits and losses of
unpacked ones, a packed classification run learns as well, and packed documents do not see each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread

REVIEWS = [f"data.train={REPO / 'recipes/ci/data/reviews-train.jsonl'}"]
REVIEWS.append(f"data.eval={REPO / 'recipes/ci/data/reviews-eval.jsonl'}")
NO_DROPOUT = ["model.from_config.hidden_dropout_prob=0", "model.from_config.attention_probs_dropout_prob=0"]
LENGTHS = [5, 9, 3, 12, 7, 2, 11, 4]


class Tokenizer:
    pad_token_id = 0


def model(kind: str, attention: str, head: str = "classification"):
    import torch
    import transformers
    from transformers import BertConfig, GPT2Config

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=64, num_labels=3)
        config.pad_token_id = config.bos_token_id = config.eos_token_id = 0
    else:
        config = BertConfig(
            num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=300
        )
        config.num_labels = 3
    auto = getattr(
        transformers,
        {"classification": "AutoModelForSequenceClassification", "lm": "AutoModelForCausalLM"}.get(
            head, "AutoModelForMaskedLM"
        ),
    )
    return auto.from_config(config, attn_implementation=attention).eval()


def features(with_types: bool = False) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(1)
    rows = []
    for index, length in enumerate(LENGTHS):
        ids = torch.randint(1, 100, (length,), generator=generator).tolist()
        row = {"input_ids": ids, "labels": index % 3}
        if with_types:
            row["token_type_ids"] = [0] * (length // 2) + [1] * (length - length // 2)
        rows.append(row)
    return rows


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_packed_classification_matches_unpacked(kind: str, attention: str) -> None:
    import torch
    import torch.nn.functional as F

    from llmkit.tasks.mechanisms.padding_free import ExamplePacker, accept_packed_batches, mask_style

    classifier = model(kind, attention)
    accept_packed_batches(classifier)
    rows = features(with_types=kind == "bert")
    packer = ExamplePacker(Tokenizer(), causal=kind == "gpt2", example_labels=True, style=mask_style(classifier))
    batch = packer(rows)
    assert batch["input_ids"].shape[0] < len(rows), "examples share rows"
    with torch.no_grad():
        packed = classifier(**batch)
        alone = [
            classifier(**{k: torch.tensor([v]) for k, v in row.items() if k != "labels"}).logits[0] for row in rows
        ]
    alone = torch.stack(alone)
    assert (packed.logits - alone).abs().max() < 1e-5
    labels = torch.tensor([row["labels"] for row in rows])
    per_example = F.cross_entropy(packed.logits, labels, reduction="none")
    assert torch.allclose(per_example, F.cross_entropy(alone, labels, reduction="none"), atol=1e-5)
    assert abs(float(packed.loss) - float(per_example.mean())) < 1e-6


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_prompt_to_target_matches_unpacked(attention: str) -> None:
    """Token-level labels (a masked prompt, then the target): same logits per token, same token-mean loss."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from llmkit.tasks.mechanisms.padding_free import ExamplePacker, accept_packed_batches

    decoder = model("gpt2", attention, head="lm")
    accept_packed_batches(decoder)
    rows = [
        {
            "input_ids": row["input_ids"],
            "labels": [-100] * (len(row["input_ids"]) // 2) + row["input_ids"][len(row["input_ids"]) // 2 :],
        }
        for row in features()
    ]
    packed_batch = ExamplePacker(Tokenizer(), causal=True, example_labels=False, style=attention)(rows)
    padded = DataCollatorForSeq2Seq(_pad_tokenizer(), label_pad_token_id=-100)(rows)
    with torch.no_grad():
        packed = decoder(**packed_batch)
        reference = decoder(**padded)
    assert abs(float(packed.loss) - float(reference.loss)) < 1e-5
    for index, (row, start, length) in enumerate(packed_batch["packed_spans"].tolist()):
        mine = packed.logits[row, start : start + length]
        theirs = reference.logits[index, :length]
        assert (mine - theirs).abs().max() < 1e-5


def _pad_tokenizer():
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection

    tokenizer = train_tokenizer(TokenizerTrainSection(kind="bpe", vocab_size=120), ["a b c d e f"] * 20)
    tokenizer.pad_token_id = 0
    tokenizer.padding_side = "right"
    return tokenizer


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_packed_documents_do_not_see_each_other(task: str, attention: str, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset

    from llmkit.recipe import recipe_from_mapping
    from llmkit.tasks import TASKS
    from llmkit.tasks.mechanisms.packing import lm_features

    tokenizer = _pad_tokenizer()
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    texts = ["a b c d e f a b", "c c d e f", "f e d c b a a a a b c d e f a b c d"]
    content = {
        "task": task,
        "model": {"from_config": {"model_type": "gpt2"}},
        "tokenizer": {"train": {"kind": "bpe"}},
        "data": {"train": "x.txt", "max_length": 32, "packing": "documents"},
        "training": {"output_dir": str(tmp_path)},
    }
    recipe = recipe_from_mapping(content)
    blocks = lm_features(Dataset.from_dict({"text": texts}), tokenizer, recipe, "train", append_eos=task == "clm")
    network = model("gpt2" if task == "clm" else "bert", attention, head="lm" if task == "clm" else "mlm")
    collator = TASKS[task].collator(recipe, tokenizer, network)
    batch = collator([blocks[0]])
    starts = [i for i, flag in enumerate(blocks[0]["document_starts"]) if flag]
    assert len(starts) >= 2, "the first block holds the start of a second document"
    first, second = starts[0], starts[1]
    ids = batch["input_ids"]
    end = starts[2] if len(starts) > 2 else ids.shape[1]
    with torch.no_grad():
        together = network(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, second:end]
        alone = network(input_ids=ids[:, second:end]).logits[0]
        crossing = network(input_ids=ids[:, first:end]).logits[0, second - first :]
    assert (together - alone).abs().max() < 1e-5
    assert (crossing - alone).abs().max() > 1e-3, "without the mask the documents would see each other"
    if task == "clm":
        assert batch["labels"][0, second] == -100, "a document's first token is not predicted from the one before"


def test_packed_classification_learns_as_well_and_check_shows_it(tmp_path: Path) -> None:
    results = {}
    with one_thread():
        for packing in ("false", "true"):
            out = tmp_path / packing
            result = invoke(
                "finetune",
                "ci/tiny-bert-classification",
                f"training.output_dir={out}",
                f"data.packing={packing}",
                *NO_DROPOUT,
                *REVIEWS,
            )
            assert result.exit_code == 0, result.output
            results[packing] = json.loads((out / "metrics.json").read_text())
    assert results["true"]["eval_accuracy"] == results["false"]["eval_accuracy"] >= 0.9
    # without dropout (whose random draws follow the tensor shapes) the two runs take the same steps
    assert abs(results["true"]["eval_loss"] - results["false"]["eval_loss"]) < 1e-4

    check = invoke("check", "ci/tiny-bert-classification", "data.packing=true", *REVIEWS)
    assert check.exit_code == 0, check.output
    assert "packing: each batch's examples share rows" in check.stdout
    assert check.stdout.count("→ label [[") == 3, "each packed example is shown alone with its label"


def test_documents_packing_is_for_language_models() -> None:
    result = invoke("check", "ci/tiny-bert-classification", "data.packing=documents", *REVIEWS)
    assert result.exit_code == 2
    assert "data.packing" in result.output and "clm/mlm" in result.output
