"""Tokenizers: the recipe's (or the model's own), loaded with a pad token, or trained on the data.

Trained tokenizers are reproducible (the same texts give a byte-identical `tokenizer.json` in any process),
so a run trained from scratch can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit import hub
from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    from llmkit.recipe import ModelSection, TokenizerSection, TokenizerTrainSection

BPE_SPECIAL = "<|endoftext|>"
#: any one of these makes a folder a tokenizer (fast, GPT-2 BPE, WordPiece, sentencepiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_tokenizer(section: TokenizerSection, model: ModelSection) -> PreTrainedTokenizerBase:
    """The tokenizer named by the recipe (or the model's own). Training is `train_tokenizer`."""
    from transformers import AutoTokenizer

    from llmkit.models import hub_error
    from llmkit.run_folder import adapter_base, is_adapter_folder

    name = section.name_or_path or model.name_or_path
    if name is None:
        raise LlmkitError("`model.from_config` needs a tokenizer: set `tokenizer.name_or_path` or `tokenizer.train`")
    if is_adapter_folder(name) and not (Path(name) / "tokenizer_config.json").is_file():
        name = adapter_base(Path(name))
    if Path(name).is_dir() and not any((Path(name) / file).is_file() for file in TOKENIZER_FILES):
        field = "tokenizer.name_or_path" if section.name_or_path else "model.name_or_path"
        known = ", ".join(TOKENIZER_FILES[:4])
        raise LlmkitError(f"recipe field `{field}`: {name} has no tokenizer files ({known}, ...)")
    hub.prepare(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, TypeError) as err:
        raise hub_error("tokenizer", name, err) from None
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """GPT-2 style tokenizers have no pad token; batching needs one, so reuse EOS (labels mask it by attention)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(spec: TokenizerTrainSection, texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """Train a GPT-2 style byte-level BPE or a BERT style WordPiece tokenizer on the given texts.

    Both kinds are reproducible: the same texts give a byte-identical `tokenizer.json` in any process. Byte-level BPE
    is so as trained (its whole 256-symbol alphabet is given up front, so every id is assigned in a fixed order);
    WordPiece needs `_train_wordpiece`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if spec.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=[BPE_SPECIAL],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_batches(texts), trainer)
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BPE_SPECIAL, eos_token=BPE_SPECIAL, unk_token=BPE_SPECIAL
        )
    else:
        tok = _train_wordpiece(spec, texts)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            # segment ids tell BERT which text of a pair (question/context, sentence pair) a token belongs to
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    return ensure_pad_token(wrapped)


def _wordpiece_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    """A BERT style (uncased) WordPiece tokenizer, empty or over the given vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _train_wordpiece(spec: TokenizerTrainSection, texts: Iterable[str]) -> Tokenizer:
    """Train WordPiece so that the same texts always give the same vocabulary, ids included.

    The trainer (tokenizers 0.23, huggingface/tokenizers#1794) creates the `##x` continuation pieces while walking
    a randomly seeded hash map of the words, so their ids change from process to process; and ids break the ties
    between equally frequent merges, so even which pieces are learned can change. The fix needs two passes over the
    texts (they are held in memory): a first one without merges finds the continuation pieces, the second registers
    them up front, sorted, after the 5 specials (the trainer numbers these in order and reuses them instead of
    creating its own). Same pieces, same counts, same vocabulary size as the stock trainer; only the ids are fixed.
    The result is rebuilt over the learned vocabulary so that the pieces are plain vocabulary entries again, not
    added tokens matched in raw text.
    """
    from tokenizers import trainers

    batches = list(_batches(texts))
    probe = _wordpiece_tokenizer()
    probe.train_from_iterator(
        batches, trainers.WordPieceTrainer(vocab_size=0, special_tokens=WORDPIECE_SPECIALS, show_progress=False)
    )
    # with no merges the vocabulary is the specials, the alphabet and each continuation piece "##" + one character
    pieces = sorted(token for token in probe.get_vocab() if len(token) == 3 and token.startswith("##"))
    trained = _wordpiece_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=WORDPIECE_SPECIALS + pieces,
        show_progress=False,
    )
    trained.train_from_iterator(batches, trainer)
    tok = _wordpiece_tokenizer(trained.get_vocab(with_added_tokens=False))
    tok.add_special_tokens(WORDPIECE_SPECIALS)
    return tok


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    """The non-empty texts in lists of `size`, in their order (the trainers take batches of texts)."""
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
