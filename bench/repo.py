"""Repository benchmark: a whole model repository folder (sharded safetensors, config,
tokenizer) published, delivered to an edge on loopback and handed to an app as a directory,
against nginx + curl of the same files in the same run.

Three parts:

1. **Sharded LLM** (``--gib``, default 2): a Llama-shaped bf16 repository as people ship it
   (``model-0000k-of-00004.safetensors`` + ``model.safetensors.index.json``, a real
   transformers ``config.json`` whose shapes the tensors have, ``generation_config.json``,
   and a fast BPE tokenizer trained offline). The weights are synthetic, each row with its
   own scale (log-normal, σ = 1), as :func:`bench.size.make_model` makes them. Measured per
   run (``--runs``, medians): ``peerprog publish DIR`` (seconds, and its own peak RSS:
   :func:`run_peak`); a seed and an edge daemon on loopback, the app's ``want`` then at once
   ``Client.best_dir(name, dest, min_level="max")`` until the exact directory is swapped
   in; the edge's peak RSS (VmHWM); every file's SHA-256 against the source's. Baselines in
   the same run: nginx serving the source folder, ``curl`` of each file to disk then
   ``sync`` of the files and the folder (synced), and ``curl`` to /dev/null.
2. **Capped link** (``--capped-gib``, default 0.5, ``--rate`` default 50 MB/s): the same
   with the edge's download capped (``limits.download_bytes_per_s``): time to the first
   ``best_dir`` (``min_level=0``) and to the exact directory, against ``curl
   --limit-rate`` of the whole repository at the same rate (to disk, synced).
3. **Many tensors** (unless ``--skip-many``): a repository of ``--many-tensors`` (100,000)
   small bf16 tensors named as a mixture-of-experts checkpoint names them
   (``model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`` and a router per layer),
   ``--many-gib`` (1) GiB in ``--many-shards`` (8) shards, against the same data bytes in 64
   tensors (same shards, only the headers differ): publish time and peak RSS of each.

Prints JSON; ``--write`` also updates the "Repositories" section of BENCHMARKS.md and
``bench/results/repo.json``. Everything is made in a folder ``peerprog-bench-repo-*`` under
``--dir`` (default the temporary folder), removed at the end.

    .venv/bin/python -m bench.repo --gib 0.25 --runs 1 --capped-gib 0.1 \\
        --many-tensors 10000 --many-gib 0.1           # a quick check
    .venv/bin/python -m bench.repo --write            # the table in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.baseline import Nginx, curl_files
from bench.report import ROOT, machine, table, write_section
from bench.size import digest, tensor_digest, vm_hwm
from peerprog.api.client import Client
from peerprog.api.errors import LevelGone
from tests.integration.cluster import Cluster

NAME = "repo"
GIB = 1 << 30
MIB = 1 << 20
BLOCK_ELEMENTS = 1 << 23
"""Weights generated at a time (32 MiB of float32)."""
RESULTS = ROOT / "bench" / "results" / "repo.json"
WAIT = 3600.0
DECODED = re.compile(r"level (\d+) decoded in ([\d.]+) s")
"""The edge's log line for each level it builds as files."""

SENTENCES = (
    "the cat sat on the mat.",
    "a dog runs in the park with the cat.",
    "peers share the model in small chunks.",
    "the first level is coarse and the last level is exact.",
    "every node checks each chunk before it serves it.",
    "a small device gets a good model fast!",
)


# --- synthetic weights ---------------------------------------------------------------------


def to_bf16(w: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """float32 → bfloat16 bits, rounded to nearest even as torch does (as bench.size)."""
    bits = w.view(np.uint32)
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


def scaled_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray[Any, Any]:
    """``rows`` rows of bf16 weights, each with its own scale (log-normal, σ = 1, × 0.02),
    drawn as :func:`bench.size.make_model` draws them."""
    scale = np.exp(rng.standard_normal(rows, dtype=np.float32)) * 0.02
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= scale[:, None]
    return to_bf16(w)


def tensor_blocks(rng: np.random.Generator, shape: list[int]) -> Iterator[np.ndarray[Any, Any]]:
    """A tensor's bf16 data, a block of rows at a time; a vector (a norm's weight) is
    1 + small noise."""
    if len(shape) == 1:
        yield to_bf16(1.0 + 0.05 * rng.standard_normal(shape[0], dtype=np.float32))
        return
    rows, cols = shape
    step = max(1, BLOCK_ELEMENTS // cols)
    for start in range(0, rows, step):
        yield scaled_rows(rng, min(step, rows - start), cols)


def write_safetensors(
    path: Path, entries: list[tuple[str, list[int]]], blocks: Iterable[np.ndarray[Any, Any]]
) -> int:
    """A bf16 safetensors file of ``entries`` (name, shape), its data streamed from
    ``blocks`` in the entries' order; returns the file's size."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for block in blocks:
            f.write(block.data)
            written += block.nbytes
    if written != offset:
        raise AssertionError(f"{path}: wrote {written} data bytes, the header says {offset}")
    return path.stat().st_size


def write_index(folder: Path, shard_of: dict[str, str], total: int) -> None:
    doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc, indent=2) + "\n")


def shard_name(k: int, n: int) -> str:
    return f"model-{k + 1:05d}-of-{n:05d}.safetensors"


# --- the Llama-shaped repository -----------------------------------------------------------


def llm_dims(gib: float) -> dict[str, int]:
    """Llama dimensions whose bf16 weights make at least ``gib`` GiB (more layers for more):
    at 2 GiB, TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads)."""
    if gib >= 1:
        hidden, inter, heads = 2048, 5632, 32
    elif gib >= 0.2:
        hidden, inter, heads = 1024, 2816, 16
    else:
        hidden, inter, heads = 512, 1408, 8
    vocab, kv = 32000, 4
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * kv * head_dim * hidden + 3 * inter * hidden + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, math.ceil((gib * GIB / 2 - fixed) / per_layer))
    return {
        "vocab": vocab,
        "hidden": hidden,
        "intermediate": inter,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
    }


def llm_tensors(d: dict[str, int]) -> list[tuple[str, list[int]]]:
    """``LlamaForCausalLM``'s state dict: names and shapes, in the order of the layers."""
    h, i, kv = d["hidden"], d["intermediate"], d["kv_heads"] * d["head_dim"]
    out: list[tuple[str, list[int]]] = [("model.embed_tokens.weight", [d["vocab"], h])]
    for n in range(d["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [h, h]),
            (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]),
            (p + "self_attn.o_proj.weight", [h, h]),
            (p + "post_attention_layernorm.weight", [h]),
            (p + "mlp.gate_proj.weight", [i, h]),
            (p + "mlp.up_proj.weight", [i, h]),
            (p + "mlp.down_proj.weight", [h, i]),
        ]
    out += [("model.norm.weight", [h]), ("lm_head.weight", [d["vocab"], h])]
    return out


def write_meta(folder: Path, d: dict[str, int]) -> dict[str, Any]:
    """config.json, generation_config.json and a fast BPE tokenizer (trained in memory);
    checks that the config's model has exactly the tensors :func:`llm_tensors` lists."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=256, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=d["vocab"],
        hidden_size=d["hidden"],
        intermediate_size=d["intermediate"],
        num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"],
        num_key_value_heads=d["kv_heads"],
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )
    config.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    ).save_pretrained(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    have = dict(llm_tensors(d))
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise AssertionError(f"the tensors differ from LlamaForCausalLM's: {diff[:6]}")
    return {"tokenizer_vocab": len(tokenizer)}


def make_llm_repo(folder: Path, gib: float, shards: int = 4, seed: int = 0) -> dict[str, Any]:
    """Write the Llama-shaped repository into ``folder``; its description."""
    folder.mkdir(parents=True)
    d = llm_dims(gib)
    tensors = llm_tensors(d)
    sizes = [math.prod(s) * 2 for _, s in tensors]
    total = sum(sizes)
    groups: list[list[tuple[str, list[int]]]] = [[] for _ in range(shards)]
    start = 0
    for (name, shape), n in zip(tensors, sizes, strict=True):
        groups[min(shards - 1, (start + n // 2) * shards // total)].append((name, shape))
        start += n
    rng = np.random.default_rng(seed)
    shard_of: dict[str, str] = {}
    for k, group in enumerate(groups):
        path = folder / shard_name(k, shards)
        blocks = (b for _, shape in group for b in tensor_blocks(rng, shape))
        write_safetensors(path, group, blocks)
        shard_of.update({name: path.name for name, _ in group})
    write_index(folder, shard_of, total)
    meta = write_meta(folder, d)
    return {"dims": d, "tensors": len(tensors), "weight_bytes": total, **meta, **describe(folder)}


def describe(folder: Path) -> dict[str, Any]:
    """A repository folder's files: relative path → (size, SHA-256)."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return {"files": files, "repo_bytes": sum(f["size"] for f in files.values())}


# --- the many-tensors repositories ---------------------------------------------------------

MOE_HIDDEN = 128
MOE_LAYERS = 40


def moe_tensors(count: int, nbytes: int) -> list[tuple[str, list[int]]]:
    """About ``count`` tensors of at least ``nbytes`` in all: per layer a router
    (``mlp.gate.weight``, experts × hidden) and each expert's gate, up and down projections
    (hidden × intermediate), with the intermediate size that makes ``nbytes``."""
    layers = min(MOE_LAYERS, max(1, count // 16))
    experts = max(1, round((count / layers - 1) / 3))
    h = MOE_HIDDEN
    inter = max(1, math.ceil((nbytes / 2 - layers * experts * h) / (layers * experts * 3 * h)))
    out: list[tuple[str, list[int]]] = []
    for n in range(layers):
        p = f"model.layers.{n}.mlp."
        out.append((p + "gate.weight", [experts, h]))
        for e in range(experts):
            q = f"{p}experts.{e}."
            out += [
                (q + "gate_proj.weight", [inter, h]),
                (q + "up_proj.weight", [inter, h]),
                (q + "down_proj.weight", [h, inter]),
            ]
    return out


def stream_blocks(seed: int, elements: int) -> Iterator[np.ndarray[Any, Any]]:
    """``elements`` bf16 weights as rows of :data:`MOE_HIDDEN`, each with its own scale:
    the same bytes whatever tensors they are cut into."""
    rng = np.random.default_rng(seed)
    rows = elements // MOE_HIDDEN
    step = BLOCK_ELEMENTS // MOE_HIDDEN
    for start in range(0, rows, step):
        yield scaled_rows(rng, min(step, rows - start), MOE_HIDDEN)


def make_many_repos(many: Path, few: Path, count: int, nbytes: int, shards: int) -> dict[str, Any]:
    """Two repositories of the same shards' data bytes: ``many`` with about ``count`` small
    tensors, ``few`` with 64 in all (64 / ``shards`` per shard)."""
    if 64 % shards:
        raise SystemExit("--many-shards must divide 64")
    many.mkdir(parents=True)
    few.mkdir(parents=True)
    tensors = moe_tensors(count, nbytes)
    per = -(-len(tensors) // shards)
    total = sum(math.prod(s) * 2 for _, s in tensors)
    shard_many: dict[str, str] = {}
    shard_few: dict[str, str] = {}
    j = 0
    for k in range(shards):
        group = tensors[k * per : (k + 1) * per]
        elements = sum(math.prod(s) for _, s in group)
        name = shard_name(k, shards)
        write_safetensors(many / name, group, stream_blocks(k, elements))
        shard_many.update({n: name for n, _ in group})
        rows = [
            int(r.size) for r in np.array_split(np.arange(elements // MOE_HIDDEN), 64 // shards)
        ]
        fused: list[tuple[str, list[int]]] = []
        for r in rows:
            fused.append((f"model.layers.{j}.mlp.experts.weight", [r, MOE_HIDDEN]))
            j += 1
        write_safetensors(few / name, fused, stream_blocks(k, elements))
        shard_few.update({n: name for n, _ in fused})
    write_index(many, shard_many, total)
    write_index(few, shard_few, total)
    for k in range(shards):  # the same data bytes: only the headers differ
        a, b = many / shard_name(k, shards), few / shard_name(k, shards)
        if tensor_digest(a) != tensor_digest(b):
            raise AssertionError(f"{a.name}: the two repositories' data differ")
    return {
        "tensors": len(tensors),
        "tensors_few": j,
        "shards": shards,
        "weight_bytes": total,
        "repo_bytes_many": sum(p.stat().st_size for p in many.iterdir()),
        "repo_bytes_few": sum(p.stat().st_size for p in few.iterdir()),
        "elements_per_expert_tensor": math.prod(tensors[1][1]),
    }


# --- peerprog ------------------------------------------------------------------------------


class Watcher:
    """Polls an edge's status of ``NAME``: when each level is reached, when it completes."""

    def __init__(self, socket: Path, t0: float) -> None:
        self.client = Client(socket, timeout=30)
        self.t0 = t0
        self.levels: dict[int, float] = {}
        self.complete_s: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                doc = self.client.status(NAME)
            except Exception:  # not known yet, or shutting down
                doc = {}
            now = time.perf_counter() - self.t0
            level = doc.get("level")
            if isinstance(level, int) and level >= 0:
                for lv in range(level + 1):
                    self.levels.setdefault(lv, now)
            if doc.get("complete") and self.complete_s is None:
                self.complete_s = now
            self.stop.wait(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def check_dir(dest: Path, source: dict[str, Any]) -> bool:
    """Every source file is in ``dest`` with the same SHA-256, and nothing else but the
    marker."""
    got = {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.name != ".peerprog.json"
    }
    if got != set(source["files"]):
        return False
    return all(digest(dest / p) == f["sha256"] for p, f in source["files"].items())


PEAK_WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(out, "w") as f:
                f.write(line.split()[1])
atexit.register(peak)
sys.argv[0] = "peerprog"
runpy.run_module("peerprog", run_name="__main__", alter_sys=True)
"""


def run_peak(args: list[str], scratch: Path) -> tuple[float, int, str]:
    """Run ``peerprog ARGS``: (seconds, its peak RSS in bytes, its stdout).

    The peak is the child's own VmHWM, written by the child as it exits. Not
    :func:`bench.size.run_measured`'s ``ru_maxrss`` from wait4: subprocess starts children
    with vfork, and exec carries the parent's high-water mark into the child's
    ``ru_maxrss``, so it reports at least this process's own peak (numpy, transformers and
    the weight generator here)."""
    peak_file = scratch / f"peak-{os.getpid()}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *args], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"peerprog {args[:3]} exited {proc.returncode}: {proc.stderr[-3000:]}")
    try:
        peak = int(peak_file.read_text()) * 1024
    finally:
        peak_file.unlink(missing_ok=True)
    return seconds, peak, proc.stdout


def publish(c: Cluster, folder: Path) -> dict[str, Any]:
    """``peerprog publish FOLDER`` into the seed store in a child process: its JSON, seconds
    and peak RSS."""
    c.public_key  # noqa: B018 - make the key
    args = ["publish", str(folder), "--name", NAME]
    args += ["--key", str(c.key_path), "--store", str(c.seed_store), "--json"]
    seconds, rss, out = run_peak(args, c.root)
    return {"seconds": seconds, "peak_rss": rss, "doc": json.loads(out)}


def deliver(
    root: Path, source: Path, desc: dict[str, Any], rate: int = 0, first: bool = False
) -> dict[str, Any]:
    """One run: publish ``source``, start a seed and an edge (download capped at ``rate``
    B/s), and time the app's request to a directory. With ``first``, the app first asks
    for any level (``min_level=0``), then for the exact one."""
    cluster = root / "cluster"
    dest = root / "app" / "model"
    try:
        with Cluster(cluster) as c:
            pub = publish(c, source)
            seed = c.start(c.seed())
            edge = c.start(c.node("edge", bootstrap=[seed], download_bytes_per_s=rate))
            client = Client(edge.socket, timeout=600)
            out: dict[str, Any] = {}
            t0 = time.perf_counter()
            watcher = Watcher(edge.socket, t0)
            try:
                client.want(NAME)
                if first:
                    try:
                        d0 = client.best_dir(NAME, dest, min_level=0, wait=WAIT)
                        out["first_level"] = d0.level
                    except LevelGone as e:  # it chased newer levels TREE_TRIES times
                        out["first_level"] = None
                        out["first_error"] = str(e)
                    out["first_dir_s"] = time.perf_counter() - t0
                best = client.best_dir(NAME, dest, min_level="max", wait=WAIT)
                out["exact_dir_s"] = time.perf_counter() - t0
            finally:
                watcher.close()
            out["edge_complete_s"] = watcher.complete_s
            out["edge_levels_s"] = [watcher.levels.get(k) for k in sorted(watcher.levels)]
            out["exact_flag"] = best.exact
            out["levels_total"] = best.levels_total
            out["sha256_ok"] = check_dir(dest, desc)
            out["edge_peak_rss"] = vm_hwm(edge.pid)
            out["seed_peak_rss"] = vm_hwm(seed.pid)
            out["edge_decodes"] = [[int(lv), float(s)] for lv, s in DECODED.findall(c.logs(edge))]
            status = edge.request("GET", "/v1/status").json()
            out["edge_store_error"] = status.get("store_error")
            c.stop(edge)
            c.stop(seed)
        doc = pub.pop("doc")
        out["publish_s"] = pub["seconds"]
        out["publish_peak_rss"] = pub["peak_rss"]
        out["stream_bytes"] = doc["total_bytes"]
        out["levels_bytes"] = [lv["bytes"] for lv in doc["levels"]]
        return out
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
        shutil.rmtree(root / "app", ignore_errors=True)


def med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def spread(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs]


def sharded(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    src = root / "src-llm"
    desc = make_llm_repo(src, args.gib)
    paths = sorted(desc["files"])
    runs: list[dict[str, Any]] = []
    with Nginx(src, root / "nginx") as web:
        for i in range(args.runs):
            log(f"sharded run {i + 1}/{args.runs}: curl")
            out = root / "curl"
            disk = curl_files(web.url, paths, out)
            ok = all(digest(out / p) == desc["files"][p]["sha256"] for p in paths)
            shutil.rmtree(out)
            null = curl_files(web.url, paths, None)
            log(f"sharded run {i + 1}/{args.runs}: peerprog")
            run = deliver(root, src, desc)
            run.update(
                curl_disk_s=disk["curl_s"],
                curl_disk_synced_s=disk["synced_s"],
                curl_null_s=null["curl_s"],
                curl_ok=ok,
            )
            last = run["levels_total"] - 1
            run["exact_build_s"] = sum(s for lv, s in run["edge_decodes"] if lv == last)
            runs.append(run)
            log(json.dumps({k: v for k, v in run.items() if k.endswith("_s")}))
    shutil.rmtree(src)
    size = desc["repo_bytes"]
    keys = (
        "publish_s",
        "publish_peak_rss",
        "exact_dir_s",
        "edge_complete_s",
        "exact_build_s",
        "edge_peak_rss",
        "seed_peak_rss",
        "curl_disk_s",
        "curl_disk_synced_s",
        "curl_null_s",
    )
    res = {f"{k}": med(runs, k) for k in keys}
    return {
        "repo_bytes": size,
        "weight_bytes": desc["weight_bytes"],
        "tensors": desc["tensors"],
        "dims": desc["dims"],
        "files": {p: f["size"] for p, f in desc["files"].items()},
        "median": res,
        "exact_over_curl_synced": res["exact_dir_s"] / res["curl_disk_synced_s"],
        "budget_rss": 0.25 * size + 512 * MIB,
        "all_sha256_ok": all(r["sha256_ok"] and r["exact_flag"] for r in runs),
        "runs": runs,
    }


def capped(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    src = root / "src-capped"
    desc = make_llm_repo(src, args.capped_gib, seed=1)
    paths = sorted(desc["files"])
    runs: list[dict[str, Any]] = []
    with Nginx(src, root / "nginx-capped") as web:
        for i in range(args.runs):
            log(f"capped run {i + 1}/{args.runs}: curl --limit-rate {args.rate}")
            out = root / "curl"
            disk = curl_files(web.url, paths, out, rate=args.rate)
            shutil.rmtree(out)
            log(f"capped run {i + 1}/{args.runs}: peerprog")
            run = deliver(root, src, desc, rate=args.rate, first=True)
            run.update(curl_capped_synced_s=disk["synced_s"], curl_capped_s=disk["curl_s"])
            runs.append(run)
            log(json.dumps({k: v for k, v in run.items() if k.endswith("_s")}))
    shutil.rmtree(src)
    keys = (
        "first_dir_s",
        "exact_dir_s",
        "edge_complete_s",
        "curl_capped_synced_s",
        "edge_peak_rss",
    )
    res = {k: med(runs, k) for k in keys}
    return {
        "repo_bytes": desc["repo_bytes"],
        "tensors": desc["tensors"],
        "dims": desc["dims"],
        "rate": args.rate,
        "median": res,
        "first_over_curl": res["first_dir_s"] / res["curl_capped_synced_s"],
        "exact_over_curl": res["exact_dir_s"] / res["curl_capped_synced_s"],
        "all_sha256_ok": all(r["sha256_ok"] and r["exact_flag"] for r in runs),
        "runs": runs,
    }


def many(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    a, b = root / "src-many", root / "src-few"
    nbytes = int(args.many_gib * GIB)
    log(f"many: writing {args.many_tensors} tensors, {nbytes / GIB:g} GiB, twice")
    desc = make_many_repos(a, b, args.many_tensors, nbytes, args.many_shards)
    out: dict[str, Any] = {**desc}
    for label, folder in (("many", a), ("few", b)):
        runs = []
        for i in range(args.runs):
            log(f"many: publish {label} {i + 1}/{args.runs}")
            with Cluster(root / "cluster") as c:
                p = publish(c, folder)
                runs.append({"seconds": p["seconds"], "peak_rss": p["peak_rss"]})
            shutil.rmtree(root / "cluster", ignore_errors=True)
            log(json.dumps(runs[-1]))
        out[label] = {
            "publish_s": med(runs, "seconds"),
            "publish_peak_rss": med(runs, "peak_rss"),
            "runs": runs,
        }
    shutil.rmtree(a)
    shutil.rmtree(b)
    out["time_ratio"] = out["many"]["publish_s"] / out["few"]["publish_s"]
    out["rss_ratio"] = out["many"]["publish_peak_rss"] / out["few"]["publish_peak_rss"]
    return out


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- report --------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def secs(values: Iterable[float | None]) -> str:
    return ", ".join("–" if v is None else f"{v:.2f}" for v in values)


def decodes(run: dict[str, Any]) -> str:
    """The edge's level builds, from its log: "0 (2.75 s), 3 (4.15 s), …"."""
    return ", ".join(f"{lv} ({s:.2f} s)" for lv, s in run["edge_decodes"]) or "none logged"


def command(args: argparse.Namespace) -> str:
    cmd = "python -m bench.repo"
    for flag, default in (
        ("gib", 2.0),
        ("runs", 3),
        ("capped_gib", 0.5),
        ("rate", 50_000_000),
        ("many_tensors", 100_000),
        ("many_gib", 1.0),
        ("many_shards", 8),
    ):
        value = getattr(args, flag)
        if value != default:
            cmd += f" --{flag.replace('_', '-')} {value:g}"
    if args.skip_many:
        cmd += " --skip-many"
    return cmd + " --write"


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [
        "## Repositories",
        f"`{command(args)}` (JSON in `bench/results/repo.json`; machine: {doc['machine']}). "
        f"Medians of {args.runs} run(s); the per-run values are in brackets.",
    ]
    s = doc.get("sharded")
    if s:
        m, size = s["median"], s["repo_bytes"]
        d = s["dims"]
        budget = s["budget_rss"]
        runs = s["runs"]
        synced = m["curl_disk_synced_s"]
        ratio = s["exact_over_curl_synced"]
        rows: list[list[object]] = [
            [
                "nginx → `curl` of each file to disk, then `sync` (synced)",
                f"{synced:.2f} s [{secs(spread(runs, 'curl_disk_synced_s'))}]",
                "1.0×",
                "",
            ],
            [
                "nginx → `curl` to disk, before the `sync`",
                f"{m['curl_disk_s']:.2f} s [{secs(spread(runs, 'curl_disk_s'))}]",
                f"{m['curl_disk_s'] / synced:.2f}×",
                "",
            ],
            [
                "nginx → `curl` to /dev/null",
                f"{m['curl_null_s']:.2f} s [{secs(spread(runs, 'curl_null_s'))}]",
                f"{m['curl_null_s'] / synced:.2f}×",
                "",
            ],
            [
                "`peerprog publish DIR`",
                f"{m['publish_s']:.1f} s [{secs(spread(runs, 'publish_s'))}] "
                f"({size / m['publish_s'] / 1e6:.0f} MB/s)",
                "",
                "",
            ],
            [
                "publish peak RSS",
                mib(m["publish_peak_rss"]),
                f"{m['publish_peak_rss'] / size:.3f}× the repository",
                f"≤ {mib(budget)}: {met(m['publish_peak_rss'] <= budget)}",
            ],
            [
                'app: `want`, then `best_dir(min_level="max")` → exact directory swapped in',
                f"{m['exact_dir_s']:.2f} s [{secs(spread(runs, 'exact_dir_s'))}]",
                f"{ratio:.2f}×",
                f"≤ 1.5×: {met(ratio <= 1.5)}",
            ],
            [
                "… of which the edge had every chunk (status `complete`)",
                f"{m['edge_complete_s']:.2f} s [{secs(spread(runs, 'edge_complete_s'))}]",
                f"{m['edge_complete_s'] / synced:.2f}×",
                "",
            ],
            [
                "… the edge's build of the exact level (its log)",
                f"{m['exact_build_s']:.2f} s [{secs(spread(runs, 'exact_build_s'))}]",
                "",
                "",
            ],
            [
                "edge daemon peak RSS",
                mib(m["edge_peak_rss"]),
                f"{m['edge_peak_rss'] / size:.3f}× the repository",
                f"≤ {mib(budget)}: {met(m['edge_peak_rss'] <= budget)}",
            ],
            ["seed daemon peak RSS", mib(m["seed_peak_rss"]), "", ""],
            [
                "every file's SHA-256 = the source's, `exact` true (all runs)",
                str(s["all_sha256_ok"]),
                "",
                "",
            ],
        ]
        parts += [
            f"### A sharded {size / GIB:.2f} GiB bf16 Llama repository, one seed and one edge "
            "on loopback",
            f"{len(s['files'])} files: 4 shards `model-0000k-of-00004.safetensors` "
            f"({s['tensors']} tensors: hidden {d['hidden']}, {d['layers']} layers, "
            f"{d['heads']} heads / {d['kv_heads']} KV heads, intermediate {d['intermediate']}, "
            f"vocabulary {d['vocab']}; synthetic weights with per-row scales), "
            "`model.safetensors.index.json`, transformers' `config.json` and "
            "`generation_config.json`, a BPE tokenizer (`tokenizer.json`, "
            "`tokenizer_config.json`). Stream "
            f"{runs[0]['stream_bytes'] / size:.1%} of the repository in "
            f"{runs[0]['levels_total']} levels.",
            table(["step", "measured", "vs curl synced", "target"], rows),
        ]
    c = doc.get("capped")
    if c:
        m = c["median"]
        runs = c["runs"]
        base = m["curl_capped_synced_s"]
        rate = c["rate"]
        lv0 = runs[0]["levels_bytes"][0]
        last = runs[0]["levels_total"] - 1
        got = [r["first_level"] for r in runs]
        first_levels = ", ".join(
            "none (LevelGone)" if g is None else f"{g}{' (exact)' if g == last else ''}"
            for g in got
        )
        rows = [
            [
                f"`curl --limit-rate {rate}` of every file to disk, synced",
                f"{base:.2f} s [{secs(spread(runs, 'curl_capped_synced_s'))}]",
                "1.0×",
            ],
            [
                "app: `want`, then `best_dir(min_level=0)` → first loadable directory "
                f"(level per run: {first_levels}; levels 0–{last})",
                f"{m['first_dir_s']:.2f} s [{secs(spread(runs, 'first_dir_s'))}]",
                f"{c['first_over_curl']:.2f}×",
            ],
            [
                'then `best_dir(min_level="max")` → exact directory',
                f"{m['exact_dir_s']:.2f} s [{secs(spread(runs, 'exact_dir_s'))}]",
                f"{c['exact_over_curl']:.2f}×",
            ],
            [
                "… the edge had every chunk",
                f"{m['edge_complete_s']:.2f} s [{secs(spread(runs, 'edge_complete_s'))}]",
                f"{m['edge_complete_s'] / base:.2f}×",
            ],
            [
                "edge daemon peak RSS (median; per run)",
                f"{mib(med(runs, 'edge_peak_rss'))} "
                f"[{', '.join(mib(r['edge_peak_rss']) for r in runs)}]",
                f"{med(runs, 'edge_peak_rss') / c['repo_bytes']:.2f}× the repository",
            ],
            ["every file's SHA-256 = the source's (all runs)", str(c["all_sha256_ok"]), ""],
        ]
        levels = runs[0]["edge_levels_s"]
        parts += [
            f"### Capped link: a smaller {c['repo_bytes'] / GIB:.2f} GiB repository, the "
            f"edge's download capped at {rate / 1e6:g} MB/s",
            f"The same kind of repository ({c['tensors']} tensors, hidden "
            f"{c['dims']['hidden']}, {c['dims']['layers']} layers), smaller to keep the run "
            f"short; `limits.download_bytes_per_s = {rate}` on the edge. Level 0 is "
            f"{lv0 / c['repo_bytes']:.1%} of the repository's bytes (the files carried whole "
            "included). In the first run the edge reached its levels after "
            f"{secs(levels)} s (status polled every 50 ms), and decoded levels "
            f"{decodes(runs[0])}.",
            table(["step", "measured", "vs curl"], rows),
        ]
    n = doc.get("many")
    if n:
        rows = []
        for label, what in (
            ("few", f"{n['tensors_few']} tensors"),
            ("many", f"{n['tensors']:,} tensors"),
        ):
            r = n[label]
            rows.append(
                [
                    what,
                    f"{r['publish_s']:.1f} s [{secs(x['seconds'] for x in r['runs'])}]",
                    mib(r["publish_peak_rss"]),
                ]
            )
        rows.append(
            [
                "many / 64 (target ≤ 2×)",
                f"{n['time_ratio']:.2f}×: {met(n['time_ratio'] <= 2)}",
                f"{n['rss_ratio']:.2f}×: {met(n['rss_ratio'] <= 2)}",
            ]
        )
        parts += [
            f"### Many tensors: {n['tensors']:,} small tensors against 64, the same "
            f"{n['weight_bytes'] / GIB:.2f} GiB",
            f"Mixture-of-experts names (`model.layers.L.mlp.experts.E.{{gate,up,down}}_proj"
            f".weight`, {n['elements_per_expert_tensor']:,} bf16 weights each, and a router "
            f"`mlp.gate.weight` per layer) in {n['shards']} shards with an index, against "
            f"the same shards' data bytes cut into {n['tensors_few']} tensors (only the "
            "headers differ). `peerprog publish DIR`, a child process each:",
            table(["repository", "publish", "peak RSS"], rows),
        ]
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="sharded repository's GiB (2)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measure, for medians (3)")
    ap.add_argument("--capped-gib", type=float, default=0.5, help="capped part's GiB (0.5)")
    ap.add_argument("--rate", type=int, default=50_000_000, help="the cap in B/s (50 MB/s)")
    ap.add_argument("--many-tensors", type=int, default=100_000, help="tensors (100,000)")
    ap.add_argument("--many-gib", type=float, default=1.0, help="their GiB (1)")
    ap.add_argument("--many-shards", type=int, default=8, help="their shards (8)")
    ap.add_argument("--skip-sharded", action="store_true", help="leave out part 1")
    ap.add_argument("--skip-capped", action="store_true", help="leave out part 2")
    ap.add_argument("--skip-many", action="store_true", help="leave out part 3")
    ap.add_argument("--dir", default=None, help="parent of the work folder (default: /tmp)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the JSON")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="peerprog-bench-repo-", dir=args.dir))
    doc: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    try:
        parts: list[tuple[str, Callable[[Path, argparse.Namespace], dict[str, Any]]]] = []
        if not args.skip_sharded:
            parts.append(("sharded", sharded))
        if not args.skip_capped:
            parts.append(("capped", capped))
        if not args.skip_many:
            parts.append(("many", many))
        for key, fn in parts:
            doc[key] = fn(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(doc, indent=2))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
        write_section("repo", markdown(doc, args))


if __name__ == "__main__":
    main()
