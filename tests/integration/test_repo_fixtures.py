"""The tiny model repositories of tests/repos.py: laid out as shipped, sharded, loadable
with no missing or unexpected key, and reproducible from their seed."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from tests import repos

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "bert": repos.bert_repo,
    "gpt2": repos.gpt2_repo,
    "llama": repos.llama_repo,
}
EXTRA_FILES = {
    "bert": ("config.json", "vocab.txt"),
    "gpt2": ("config.json", "generation_config.json"),
    "llama": ("config.json", "generation_config.json"),
}
CLASSES = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
DTYPES = {"bert": torch.float32, "gpt2": torch.float32, "llama": torch.bfloat16}


def files_of(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())


def check_shards(repo: Path) -> dict[str, str]:
    """At least 3 shards, named n-of-N, each listed in the index, holding every tensor the
    index maps to it and no other; the index's weight_map."""
    shards = repos.shards(repo)
    assert len(shards) >= 3
    total = len(shards)
    assert [p.name for p in shards] == [
        f"model-{k:05d}-of-{total:05d}.safetensors" for k in range(1, total + 1)
    ]
    assert not (repo / "model.safetensors").exists()
    weight_map: dict[str, str] = json.loads((repo / "model.safetensors.index.json").read_text())[
        "weight_map"
    ]
    assert set(weight_map.values()) == {p.name for p in shards}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            assert set(f.keys()) == {k for k, v in weight_map.items() if v == shard.name}
    return weight_map


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_causal_and_encoder_repos(kind: str, tmp_path: Path) -> None:
    repo = BUILDERS[kind](tmp_path / kind)
    files = files_of(repo)
    for name in (*TOKENIZER_FILES, *EXTRA_FILES[kind]):
        assert name in files
    weight_map = check_shards(repo)
    assert sum((repo / name).stat().st_size for name in files) < 2_000_000

    model = repos.load_hf(repo)
    assert type(model).__name__ == CLASSES[kind]
    assert {p.dtype for p in model.parameters()} == {DTYPES[kind]}
    tied = {"lm_head.weight"} if kind == "gpt2" else set()
    assert set(weight_map) == set(model.state_dict()) - tied
    if kind == "gpt2":
        # Tied to wte: not stored, tied again at load.
        assert "lm_head.weight" not in weight_map
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    if kind == "llama":
        assert "lm_head.weight" in weight_map
        assert json.loads((repo / "config.json").read_text())["dtype"] == "bfloat16"

    tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=True)
    ids = tokenizer(list(repos.SENTENCES), padding=kind == "bert")["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert max(max(row) for row in ids) < model.config.vocab_size
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids[0]]))
    first = out.last_hidden_state if kind == "bert" else out.logits
    assert torch.isfinite(first.float()).all()

    again = BUILDERS[kind](tmp_path / f"{kind}-again")
    assert files_of(again) == files
    assert all(filecmp.cmp(repo / n, again / n, shallow=False) for n in files)


def test_sentence_transformer_repo(tmp_path: Path) -> None:
    repo = repos.sentence_transformer_repo(tmp_path / "st")
    files = files_of(repo)
    for name in (
        *TOKENIZER_FILES,
        "vocab.txt",
        "config.json",
        "modules.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ):
        assert name in files
    check_shards(repo)
    assert sum((repo / name).stat().st_size for name in files) < 2_000_000
    modules = json.loads((repo / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]

    assert type(repos.load_hf(repo)).__name__ == "BertModel"
    vectors = repos.embed(repo)
    assert vectors.shape == (len(repos.SENTENCES), repos.HIDDEN)
    assert np.isfinite(vectors).all()
    assert len({v.tobytes() for v in vectors}) == len(repos.SENTENCES)

    single = repos.sentence_transformer_repo(tmp_path / "single", shard_size=None)
    assert (single / "model.safetensors").is_file()
    np.testing.assert_array_equal(repos.embed(single, repos.SENTENCES[:2]), vectors[:2])
