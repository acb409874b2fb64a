"""Tiny Hugging Face model repositories built offline, laid out as people ship them.

Each builder writes a folder that ``from_pretrained`` (or ``SentenceTransformer``) loads
exactly like a repository downloaded from a hub: ``config.json``, sharded safetensors
weights (``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``), a
real fast tokenizer and, for the causal LMs, ``generation_config.json``. The weights are
random, drawn from a fixed seed (the global torch RNG is left as it was), so the same call
gives byte-identical files. Nothing is fetched: the module sets ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` (unless already set) before importing transformers.

The builders run in well under a second once transformers is imported (the import itself
takes a few seconds), and each repository is a few hundred KB.

Tokenizer files: transformers 5 writes only ``tokenizer.json`` and
``tokenizer_config.json``; the builders also write ``special_tokens_map.json`` (and BERT's
WordPiece ``vocab.txt``), as the repositories saved by transformers 4 that fill the hubs
have them.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

__all__ = [
    "SENTENCES",
    "bert_repo",
    "embed",
    "gpt2_repo",
    "llama_repo",
    "load_hf",
    "sentence_transformer_repo",
    "shards",
]

SENTENCES: tuple[str, ...] = (
    "the cat sat on the mat.",
    "a dog runs in the park with the cat.",
    "peers share the model in small chunks.",
    "the first level is coarse and the last level is exact.",
    "every node checks each chunk before it serves it.",
    "a small device gets a good model fast!",
)
"""English sentences whose words are all whole words of the BERT vocabulary."""

HIDDEN = 64
"""Hidden size of every tiny model (so the sentence-transformers vector dimension)."""

MAX_POSITIONS = 64

_SPECIALS_BERT = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_EXTRA_TEXT = (
    "i you he she we they is are was were be been has have had do does did not no yes "
    "and or but if then so to of for from by at up down out over under this that these "
    "those one two three new old big fast slow good bad data file files peer node nodes "
    "chunk level levels model models network send sends get gets"
)
_EXTRA_WORDS = tuple(_EXTRA_TEXT.split())
_SUFFIXES = ("##s", "##es", "##ed", "##ing", "##er", "##ly")
_PUNCT = tuple(".,!?;:'\"-()")


def _bert_vocab() -> list[str]:
    """WordPiece vocabulary: specials, punctuation, digits, single letters and their
    ``##`` forms (so that any lower-case ASCII word tokenizes without [UNK]), then whole
    words and a few suffixes: 175 entries, no duplicates, fixed order."""
    words: list[str] = [*_SPECIALS_BERT, *_PUNCT, *string.digits, *string.ascii_lowercase]
    words += [f"##{c}" for c in string.ascii_lowercase]
    corpus_words = " ".join(SENTENCES).replace(".", " ").replace("!", " ").split()
    for word in [*corpus_words, *_EXTRA_WORDS, *_SUFFIXES]:
        if word not in words:
            words.append(word)
    return words


def _corpus() -> list[str]:
    """What the causal LMs' BPE tokenizers are trained on."""
    return [*SENTENCES, " ".join(_EXTRA_WORDS)]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's RNG inside the block and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def shards(repo: Path) -> list[Path]:
    """The safetensors shards of a repository, in order (``model-0000k-of-0000n``)."""
    return sorted(repo.glob("model-*-of-*.safetensors"))


def _save_model(model: PreTrainedModel, dest: Path, shard_size: str, min_shards: int) -> None:
    """``save_pretrained`` with sharding; raise unless it wrote at least ``min_shards``."""
    model.save_pretrained(dest, max_shard_size=shard_size)
    written = shards(dest) or sorted(dest.glob("model.safetensors"))
    if min_shards > 1 and not (dest / "model.safetensors.index.json").is_file():
        raise AssertionError(f"{dest}: no model.safetensors.index.json")
    if len(written) < min_shards:
        raise AssertionError(
            f"{dest}: {len(written)} shard(s) at max_shard_size={shard_size}, "
            f"wanted at least {min_shards}: pass a smaller shard_size"
        )


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, dest: Path) -> None:
    """``save_pretrained`` plus the ``special_tokens_map.json`` transformers 4 wrote."""
    tokenizer.save_pretrained(dest)
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if v is not None}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _bert_tokenizer(dest: Path) -> PreTrainedTokenizerFast:
    """Write ``vocab.txt`` into ``dest`` and save a fast WordPiece tokenizer built from it.

    ``BertTokenizerFast(vocab_file=...)`` silently ignores the file in transformers 5 (it
    gives a 5-token vocabulary), so the tokenizer is loaded from the folder instead, which
    is how a shipped vocab.txt is read anyway."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.txt").write_text("\n".join(_bert_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(
        dest, local_files_only=True, model_max_length=MAX_POSITIONS
    )
    _save_tokenizer(tokenizer, dest)
    return tokenizer


def bert_repo(dest: Path, *, shard_size: str = "100KB", seed: int = 0, min_shards: int = 3) -> Path:
    """A tiny ``BertModel`` repository (float32, hidden 64, 2 layers, 4 heads, intermediate
    128, 175-entry WordPiece vocabulary), about 360 KB.

    Files: ``config.json``, ``model-0000k-of-0000n.safetensors`` (4 at the default shard
    size), ``model.safetensors.index.json``, ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``, ``vocab.txt``. Raises ``AssertionError`` if fewer than
    ``min_shards`` shards were written (pass ``min_shards=1`` with a big ``shard_size`` for
    one ``model.safetensors``)."""
    tokenizer = _bert_tokenizer(dest)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        model = BertModel(config).eval()
    _save_model(model, dest, shard_size, min_shards)
    return dest


def _gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme: 256 byte symbols, merges, ``<|endoftext|>``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        model_max_length=MAX_POSITIONS,
    )


def gpt2_repo(dest: Path, *, shard_size: str = "100KB", seed: int = 0, min_shards: int = 3) -> Path:
    """A tiny ``GPT2LMHeadModel`` repository (float32, n_embd 64, 2 layers, 4 heads,
    byte-level BPE of 320 tokens), about 510 KB.

    ``lm_head.weight`` is tied to ``transformer.wte.weight``, so, as in the real GPT-2, it
    is not in the safetensors files nor in the index's ``weight_map``; ``from_pretrained``
    ties it again and reports no missing key. Files: ``config.json``,
    ``generation_config.json``, the shards (7 at the default shard size) and the index,
    ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _gpt2_tokenizer()
    _save_tokenizer(tokenizer, dest)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    with _seeded(seed):
        model = GPT2LMHeadModel(config).eval()
    _save_model(model, dest, shard_size, min_shards)
    return dest


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE (``▁`` word marker, ``<unk>``, ``<s>`` prepended)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=200,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[*string.ascii_lowercase, *string.digits, *_PUNCT, "▁"],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
    )


def llama_repo(dest: Path, *, shard_size: str = "50KB", seed: int = 0, min_shards: int = 3) -> Path:
    """A tiny ``LlamaForCausalLM`` repository in bfloat16 (hidden 64, 2 layers, 4 heads with
    2 key/value heads, intermediate 128, untied ``lm_head``, BPE of 200 tokens), about
    220 KB. ``config.json`` records ``"dtype": "bfloat16"`` and ``from_pretrained`` loads it
    as bfloat16. Files: ``config.json``, ``generation_config.json``, the shards (5 at the
    default shard size) and the index, ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _llama_tokenizer()
    _save_tokenizer(tokenizer, dest)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    _save_model(model, dest, shard_size, min_shards)
    return dest


def sentence_transformer_repo(
    dest: Path, *, seed: int = 0, shard_size: str | None = "100KB"
) -> Path:
    """A sentence-transformers repository: the tiny BERT of :func:`bert_repo` followed by
    mean pooling, 64-dimensional vectors, about 370 KB.

    ``SentenceTransformer.save`` writes one ``model.safetensors``; with ``shard_size`` set
    (the default) that file is replaced by the inner ``BertModel`` saved again with
    ``max_shard_size``, giving ``model-0000k-of-0000n.safetensors`` and the index, which
    ``SentenceTransformer`` loads as well. ``shard_size=None`` keeps the single file, as
    most shipped sentence-transformers repositories have it.

    Files: ``modules.json``, ``config_sentence_transformers.json``,
    ``sentence_bert_config.json``, ``README.md`` (the generated model card),
    ``1_Pooling/config.json``, ``config.json``, the weights, ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, ``vocab.txt``.

    The module configs are in sentence-transformers 6's format (e.g. ``1_Pooling``'s
    ``{"embedding_dimension": 64, "pooling_mode": "mean", ...}``), not the older
    ``word_embedding_dimension`` / ``pooling_mode_mean_tokens`` one."""
    with tempfile.TemporaryDirectory(prefix="bert-") as tmp:
        bert = bert_repo(Path(tmp) / "bert", seed=seed, min_shards=1, shard_size="10MB")
        transformer = Transformer(str(bert), max_seq_length=MAX_POSITIONS)
        pooling = Pooling(HIDDEN, "mean")
        model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
        dest.mkdir(parents=True, exist_ok=True)
        model.save(str(dest))
        for name in ("vocab.txt", "special_tokens_map.json"):
            (dest / name).write_bytes((bert / name).read_bytes())
    if shard_size is not None:
        (dest / "model.safetensors").unlink()
        _save_model(transformer.model, dest, shard_size, min_shards=3)
    return dest


def load_hf(path: Path) -> torch.nn.Module:
    """Load a repository with the class its ``config.json`` names (``architectures[0]``,
    e.g. ``BertModel``, ``GPT2LMHeadModel``), or ``AutoModel`` when it names none, from
    local files only, in eval mode. Raises ``AssertionError`` on any missing, unexpected
    or mismatched key, or any loading error message."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], AutoModel) if architectures else AutoModel
    model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
    problems = {
        key: sorted(map(str, info.get(key) or ()))
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    problems = {key: value for key, value in problems.items() if value}
    if problems:
        raise AssertionError(f"{path}: {type(model).__name__} loaded with {problems}")
    model.eval()
    return model


def embed(path: Path, sentences: Sequence[str] = SENTENCES) -> np.ndarray:
    """Encode ``sentences`` with the sentence-transformers repository at ``path`` on the
    CPU: a float32 array of shape ``(len(sentences), dimension)``."""
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    vectors = model.encode(list(sentences), convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors)
