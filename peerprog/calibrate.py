"""Sensitivity of a model's weights from the publisher's own data (``publish --sensitivity``).

Needs torch (the ``torch`` extra); :func:`calibrate_repo` also needs transformers. Three ways
to measure how much each weight's error matters, each averaged over the calibration batches
(:data:`METHODS`):

* ``fisher`` — the diagonal of the Fisher information of the model's output, ``E[g²]``
  with ``g`` the gradient of a sample of the output: for logits, the log-likelihood of a
  label drawn from the model's own softmax; for an embedding (an encoder without a head),
  its projection on a random Gaussian direction, whose ``E[g²]`` is the diagonal of
  ``JᵀJ``, how far the output moves per unit of squared error of the weight. No labels
  needed.
* ``grad2`` — ``E[g²]`` of a loss the caller gives (the empirical Fisher), e.g. the language
  model's loss on the text.
* ``activations`` — AWQ's statistic: the mean square of each input channel of every linear,
  convolution and embedding layer (an embedding row: how often its token occurs), which is
  how much a weight's error moves that layer's output. Forward passes only.

Gradients are taken per batch (the square of a batch's summed gradient, not of each
sample's: a cheap estimate, with batches of a few windows or pictures). The result maps
parameter names (as ``module.named_parameters()`` gives them) to float32 arrays, the mean
over the batches: one value per row (``[rows, 1]``, ``per="row"``: small files; a statistic
per input column stays ``[1, cols]``) or per weight (``per="weight"``). :func:`write` stores
it as the safetensors file publish reads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peerprog.codec.base import RawTensor
from peerprog.codec.sensitivity import Array, matrix_shape
from peerprog.errors import InputError
from peerprog.formats.reader import SafetensorsReader
from peerprog.formats.safetensors import write_safetensors
from peerprog.manifest.tree import tensor_name
from peerprog.store.scan import scan_repo

METHODS = ("fisher", "grad2", "activations")
PER = ("row", "weight")
Output = Callable[[torch.nn.Module, Any], torch.Tensor]


def sensitivity(
    module: torch.nn.Module,
    batches: Iterable[Any],
    *,
    method: str = "fisher",
    output: Output | None = None,
    logits: bool = True,
    loss: Output | None = None,
    per: str = "row",
    seed: int = 0,
) -> dict[str, Array]:
    """The sensitivity of ``module``'s parameters measured on ``batches`` (see the module
    docstring). ``output(module, batch)`` gives the model's output (default: ``module(batch)``)
    for ``fisher`` and ``activations``; ``logits``: whether that output is logits over its
    last axis (else an embedding); ``loss(module, batch)`` gives the scalar loss ``grad2``
    needs. Parameters that no batch reaches get zeros (``fisher``, ``grad2``) or are left
    out (``activations``: only layers' weights are measured). The module is left in eval
    mode with its gradients cleared."""
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r} (have {', '.join(METHODS)})")
    if per not in PER:
        raise InputError(f"per must be one of {', '.join(PER)}, not {per!r}")
    out_fn: Output = output if output is not None else (lambda m, b: m(b))
    module.eval()
    if method == "activations":
        sums, count = _activations(module, batches, out_fn)
    else:
        if method == "grad2" and loss is None:
            raise InputError("calibration method 'grad2' needs a loss")
        gen = torch.Generator().manual_seed(seed)
        sums, count = _squared_grads(module, batches, out_fn, logits, loss, gen, method)
    if count == 0:
        raise InputError("no calibration batches")
    result: dict[str, Array] = {}
    for name, s in sums.items():
        mean = (s / count).astype(np.float32)
        if per == "row" and mean.shape[0] > 1 and mean.shape[1] > 1:
            mean = mean.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        result[name] = mean
    return result


def _squared_grads(
    module: torch.nn.Module,
    batches: Iterable[Any],
    output: Output,
    logits: bool,
    loss: Output | None,
    gen: torch.Generator,
    method: str,
) -> tuple[dict[str, Array], int]:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    count = 0
    for batch in batches:
        module.zero_grad(set_to_none=True)
        if method == "grad2":
            assert loss is not None
            value = loss(module, batch)
        else:
            value = _sampled_output(output(module, batch), logits, gen)
        value.backward()  # type: ignore[no-untyped-call]
        for n, p in params:
            if p.grad is not None:
                acc[n] += p.grad.detach().float() ** 2
        count += 1
    module.zero_grad(set_to_none=True)
    return {n: _matrix(a) for n, a in acc.items()}, count


def _sampled_output(out: torch.Tensor, logits: bool, gen: torch.Generator) -> torch.Tensor:
    """A scalar whose gradient is a sample of the output's Fisher (see the module docs)."""
    out = out.float()
    if logits:
        flat = out.reshape(-1, out.shape[-1])
        with torch.no_grad():
            probs = torch.softmax(flat, dim=-1)
            labels = torch.multinomial(probs, 1, generator=gen).reshape(-1)
        return torch.nn.functional.cross_entropy(flat, labels, reduction="sum")
    direction = torch.randn(out.shape, generator=gen)
    return (out * direction).sum()


def _activations(
    module: torch.nn.Module, batches: Iterable[Any], output: Output
) -> tuple[dict[str, Array], int]:
    owners = {id(p): n for n, p in module.named_parameters()}
    sums: dict[str, Array] = {}
    hooks = []

    def add(name: str, stat: Array) -> None:
        sums[name] = sums[name] + stat if name in sums else stat

    def hook(layer: torch.nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        weight = getattr(layer, "weight", None)
        if weight is None or id(weight) not in owners or not args:
            return
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return
        stat = _input_stat(layer, x.detach(), tuple(weight.shape))
        if stat is not None:
            add(owners[id(weight)], stat)

    for layer in module.modules():
        if _kind(layer) is not None:
            hooks.append(layer.register_forward_hook(hook))
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                output(module, batch)
                count += 1
    finally:
        for h in hooks:
            h.remove()
    return sums, count


def _kind(layer: torch.nn.Module) -> str | None:
    if isinstance(layer, torch.nn.Linear):
        return "linear"
    if isinstance(layer, torch.nn.Embedding):
        return "embedding"
    if isinstance(layer, torch.nn.modules.conv._ConvNd):
        return "conv"
    if type(layer).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight [in, out]
        return "conv1d"
    return None


def _input_stat(layer: torch.nn.Module, x: torch.Tensor, wshape: tuple[int, ...]) -> Array | None:
    """The mean square of each input channel, as a matrix over the weight's (rows, cols)."""
    kind = _kind(layer)
    if kind == "embedding":  # each row's share of the tokens
        counts = torch.bincount(x.reshape(-1).long(), minlength=wshape[0]).double()
        return (counts / max(1, x.numel())).numpy()[: wshape[0], None]
    if kind in ("linear", "conv1d"):
        ms = (x.double().reshape(-1, x.shape[-1]) ** 2).mean(dim=0).numpy()
        return ms[None, :] if kind == "linear" else ms[:, None]
    if kind == "conv":
        assert isinstance(layer, torch.nn.modules.conv._ConvNd)
        ms = (x.double().transpose(0, 1).reshape(x.shape[1], -1) ** 2).mean(dim=1).numpy()
        groups = layer.groups
        rows, per_group = wshape[0], wshape[1]
        kernel = math.prod(wshape[2:])
        # weight row r reads input channels g*per_group .. (g+1)*per_group, g = its group
        g = np.arange(rows) // (rows // groups)
        chans = g[:, None] * per_group + np.arange(per_group)[None, :]
        return np.repeat(ms[chans], kernel, axis=1)
    return None


def _matrix(t: torch.Tensor) -> Array:
    """A parameter's statistic as a float64 (rows, cols) matrix."""
    rows, cols = matrix_shape(tuple(t.shape))
    out: Array = t.detach().double().reshape(rows, cols).numpy()
    return out


def write(
    path: Path, weights: Mapping[str, Array], metadata: Mapping[str, str] | None = None
) -> int:
    """Write a sensitivity file (float32 safetensors) publish reads; returns its bytes."""
    tensors = {
        name: RawTensor("float32", np.ascontiguousarray(w, dtype=np.float32))
        for name, w in weights.items()
    }
    return write_safetensors(Path(path), tensors, metadata)


# ---------------------------------------------------------------------------- repositories


@dataclass(frozen=True)
class RepoCalibration:
    """The sensitivity of a repository's tensors by their published names, and the
    parameters that matched no tensor of its files (tied copies, renamed keys)."""

    weights: dict[str, Array]
    unmatched: tuple[str, ...]
    tokens: int


def calibrate_repo(
    repo: Path,
    text: str,
    *,
    method: str = "fisher",
    per: str = "row",
    seq_len: int = 128,
    max_tokens: int = 32768,
    batch_size: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RepoCalibration:
    """The sensitivity of a transformers repository's weights on ``text``, keyed by the
    names ``peerprog publish REPO`` gives its tensors (``<file>/<tensor>``).

    A causal LM (its config names a ``…ForCausalLM`` or ``…LMHeadModel``) is measured on its
    next-token logits (``grad2``: its loss on the text); any other model (an encoder
    without a head, a sentence-transformers folder) on its embedding, pooled as the folder's
    ``1_Pooling`` config says (mean of the tokens by default; ``grad2`` needs a loss, so it
    is refused there). ``max_tokens`` of the text are cut into windows of ``seq_len``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError(
            "peerprog calibrate needs transformers (pip install transformers)"
        ) from None
    root = Path(repo)
    model_dir = root / _transformer_path(root)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no config.json, so not a transformers repository")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    archs = list(getattr(config, "architectures", None) or [])
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if method == "grad2" and not causal:
        raise InputError(f"{root}: grad2 needs a loss; use fisher or activations for an encoder")
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    limit = getattr(config, "max_position_embeddings", None) or seq_len
    seq_len = max(2, min(seq_len, int(limit)))
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise InputError("the calibration text gives no tokens")
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    pooling = _pooling(root)
    done = 0

    def inputs(batch: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(w) for w in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([w + [pad] * (width - len(w)) for w in batch])
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in batch])
        return {"input_ids": input_ids, "attention_mask": mask}

    def output(m: torch.nn.Module, batch: list[list[int]]) -> torch.Tensor:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(batches))
        x = inputs(batch)
        out = m(**x)
        if causal:
            logits: torch.Tensor = out.logits[x["attention_mask"].bool()]
            return logits
        hidden: torch.Tensor = out.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        mask = x["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    def lm_loss(m: torch.nn.Module, batch: list[list[int]]) -> torch.Tensor:
        x = inputs(batch)
        labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, -100)
        out = m(**x)
        loss: torch.Tensor = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        nonlocal done
        done += 1
        if progress:
            progress(done, len(batches))
        return loss

    by_param = sensitivity(
        model,
        batches,
        method=method,
        output=output,
        logits=causal,
        loss=lm_loss,
        per=per,
        seed=seed,
    )
    names = _published_names(root, model_dir)
    prefix = getattr(model, "base_model_prefix", "") or ""
    weights: dict[str, Array] = {}
    unmatched = []
    for param, w in by_param.items():
        candidates = [param, param.removeprefix(prefix + "."), f"{prefix}.{param}"]
        hit = next((names[c] for c in candidates if c in names), None)
        if hit is None:
            unmatched.append(param)
        else:
            weights[hit] = w
    if not weights:
        raise InputError(f"{root}: no parameter of the model matches a tensor of its files")
    tokens = sum(len(w) for w in windows)
    return RepoCalibration(weights, tuple(unmatched), tokens)


def _modules(root: Path) -> list[dict[str, Any]]:
    """A sentence-transformers folder's ``modules.json`` (empty for other folders)."""
    path = root / "modules.json"
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable JSON: {e}") from None
    return [m for m in doc if isinstance(m, dict)] if isinstance(doc, list) else []


def _transformer_path(root: Path) -> str:
    for m in _modules(root):
        if str(m.get("type", "")).endswith("Transformer"):
            return str(m.get("path", ""))
    return ""


def _pooling(root: Path) -> str:
    for m in _modules(root):
        if str(m.get("type", "")).endswith("Pooling"):
            try:
                cfg = json.loads((root / str(m.get("path", "")) / "config.json").read_text())
            except (OSError, ValueError):
                return "mean"
            return "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    return "mean"


def _published_names(root: Path, model_dir: Path) -> dict[str, str]:
    """Tensor name inside the model's safetensors files → the name publish gives it."""
    out: dict[str, str] = {}
    for f in scan_repo(root).coded:
        if not (root / f.path).resolve().is_relative_to(model_dir.resolve()):
            continue
        with SafetensorsReader(f.source) as reader:
            for info in reader.infos():
                out.setdefault(info.name, tensor_name(f.path, info.name))
    return out
