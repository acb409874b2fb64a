"""peerprog.calibrate on small torch modules: each method's statistics, their shapes (as
publish reads them) and the errors for a bad call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerprog import calibrate
from peerprog.codec.sensitivity import check
from peerprog.errors import InputError


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 6)
        self.conv = torch.nn.Conv1d(6, 6, 3, padding=1)
        self.depthwise = torch.nn.Conv1d(6, 6, 3, padding=1, groups=6)
        self.head = torch.nn.Linear(6, 5)
        self.unused = torch.nn.Linear(6, 6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).transpose(1, 2)
        x = self.depthwise(torch.relu(self.conv(x))).transpose(1, 2)
        out: torch.Tensor = self.head(x)
        return out


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 8, (2, 7), generator=gen) for _ in range(3)]  # tokens 8, 9 unseen


def _shapes(m: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in m.named_parameters()}


@pytest.mark.parametrize("method", ["fisher", "grad2", "activations"])
@pytest.mark.parametrize("per", ["row", "weight"])
def test_every_method_gives_weights_publish_accepts(method: str, per: str) -> None:
    torch.manual_seed(0)
    m = Tiny()

    def loss(mod: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = mod(b).logsumexp(-1).sum()
        return out

    w = calibrate.sensitivity(m, _batches(), method=method, loss=loss, per=per)
    sens = check(w, _shapes(m))  # names, shapes and values as publish checks them
    assert all((a >= 0).all() for a in w.values())
    assert (w["emb.weight"][8:] == 0).all() and (w["emb.weight"][:8] > 0).any()  # unseen tokens
    if method == "activations":
        assert set(w) == {"emb.weight", "conv.weight", "depthwise.weight", "head.weight"}
    else:
        assert (w["unused.weight"] == 0).all()  # never reached: no gradient
        assert w["emb.weight"].shape == ((10, 1) if per == "row" else (10, 6))
    assert sens.fill > 0
    assert not any(p.grad is not None for p in m.parameters())


def test_activation_statistics_are_the_inputs_mean_squares() -> None:
    torch.manual_seed(0)
    m = Tiny()
    batches = _batches()
    w = calibrate.sensitivity(m, batches, method="activations")
    seen = []
    hook = m.head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach()))
    with torch.no_grad():
        for b in batches:
            m(b)
    hook.remove()
    want = np.mean([(x.double().reshape(-1, 6) ** 2).mean(0).numpy() for x in seen], axis=0)
    assert w["head.weight"].shape == (1, 6)  # one per input channel, kept with per="row"
    assert np.allclose(w["head.weight"][0], want, rtol=1e-5)
    assert w["depthwise.weight"].shape == (6, 1)  # a depthwise row reads one channel
    assert w["conv.weight"].shape == (6, 1)  # per="row" averages a full matrix per row
    counts = np.bincount(torch.cat(batches).reshape(-1).numpy(), minlength=10) / 14
    assert np.allclose(w["emb.weight"][:, 0], counts / 3, rtol=1e-6)


def test_fisher_of_an_embedding_output_is_positive_where_the_output_depends() -> None:
    torch.manual_seed(0)
    m = Tiny()
    w = calibrate.sensitivity(m, _batches(), method="fisher", logits=False, per="weight")
    assert (w["head.weight"] > 0).all()
    assert w["head.bias"].shape == (1, 5)


def test_bad_calls_are_input_errors() -> None:
    m = Tiny()
    with pytest.raises(InputError, match="unknown calibration method 'hessian'"):
        calibrate.sensitivity(m, _batches(), method="hessian")
    with pytest.raises(InputError, match="needs a loss"):
        calibrate.sensitivity(m, _batches(), method="grad2")
    with pytest.raises(InputError, match="no calibration batches"):
        calibrate.sensitivity(m, [], method="fisher")
    with pytest.raises(InputError, match="per must be"):
        calibrate.sensitivity(m, _batches(), per="column")
