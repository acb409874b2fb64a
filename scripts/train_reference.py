"""Train the bundled reference model of peerprog: a small CNN on scikit-learn's digits.

Needs the ``train`` extra (torch and scikit-learn); the package itself never imports this
script. Deterministic: a fixed seed, one thread, deterministic torch algorithms, so running it
again rebuilds the same files.

Writes into ``peerprog/reference/data/``:

* ``digits_cnn.safetensors`` — the float32 state dict (``conv1.weight``, ``conv1.bias``, ...).
* ``digits_test.npz`` — the held-out test split: ``x`` uint8 pixels 0..16 of shape (N, 8, 8),
  ``y`` uint8 labels.

Usage: ``python scripts/train_reference.py [--out DIR] [--epochs N]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch  # type: ignore[import-not-found,unused-ignore]
from safetensors.torch import save_file  # type: ignore[import-not-found,unused-ignore]
from sklearn.datasets import load_digits  # type: ignore[import-not-found,unused-ignore]
from sklearn.model_selection import train_test_split  # type: ignore[import-not-found,unused-ignore]
from torch import nn

SEED = 20240601
TEST_FRACTION = 0.2
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "peerprog" / "reference" / "data"


class DigitsCNN(nn.Module):  # type: ignore[misc,unused-ignore]
    """conv 1→32 3x3 · ReLU · conv 32→64 3x3 · ReLU · maxpool 2 · fc 1024→256 · ReLU · fc 256→10.

    Must stay in step with the numpy forward pass in ``peerprog/reference/digits.py``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of (N, 1, 8, 8) images scaled to [0, 1]."""
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.pool(x)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        logits: torch.Tensor = self.fc2(x)
        return logits


def to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels 0..16 of shape (N, 8, 8) → float32 tensor (N, 1, 8, 8) in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32)[:, None, :, :] / np.float32(16.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16, shape (1797, 8, 8)
    labels = digits.target.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED % 2**32
    )

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = to_input(x_train), torch.from_numpy(y_train.astype(np.int64))
    xv, yv = to_input(x_test), torch.from_numpy(y_test.astype(np.int64))
    generator = torch.Generator().manual_seed(SEED)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(order), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
        scheduler.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            model.eval()
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test acc {acc:.4f}")
    elapsed = time.perf_counter() - start

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    n_params = sum(v.numel() for v in state.values())
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "digits_cnn.safetensors"), metadata={"format": "pt"})
    np.savez_compressed(args.out / "digits_test.npz", x=x_test, y=y_test)
    for name in ("digits_cnn.safetensors", "digits_test.npz"):
        (args.out / name).chmod(0o644)  # safetensors writes 0600; package data is world-readable
    print(
        f"params {n_params} ({n_params * 4} bytes float32), train {len(x_train)} / "
        f"test {len(x_test)} images, test acc {acc:.4f}, training {elapsed:.1f}s"
    )
    print(f"wrote {args.out / 'digits_cnn.safetensors'} and {args.out / 'digits_test.npz'}")


if __name__ == "__main__":
    main()
