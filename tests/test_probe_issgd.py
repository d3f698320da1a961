"""Messages of IS-SGD for mistakes found by probing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from optuna_isbo import ISSGD, ISSGDCallback


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(300, 10, generator=generator)
    targets = (inputs @ torch.randn(10, 3, generator=generator)).argmax(1)
    return TensorDataset(inputs, targets)


def _shifted_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none") - 5.0


@pytest.mark.parametrize("tau_threshold", [None, 0.0])
def test_negative_loss_scores_warn_once(tau_threshold: float | None) -> None:
    """``score="loss"`` with a loss below 0: tau cannot move, and a warning says why."""
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    issgd = ISSGD(
        model,
        _data(),
        batch_size=8,
        super_batch_size=64,
        seed=0,
        score="loss",
        loss_fn=_shifted_loss,
        tau_threshold=tau_threshold,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for inputs, targets, weights in issgd.batches(30):
            issgd.weighted_loss(model(inputs), targets, weights)
        _ = issgd.stats
    negative = [w for w in caught if "negative" in str(w.message) and "score" in str(w.message)]
    assert len(negative) == 1
    assert "score='loss'" in str(negative[0].message)
    assert issgd.tau == 0.0


@pytest.mark.parametrize("make", ["issgd", "callback"])
def test_super_batch_smaller_than_batch_names_both(make: str) -> None:
    model = nn.Linear(10, 3)
    with pytest.raises(
        ValueError, match=r"super_batch_size must be an integer >= 32 \(batch_size\), got 8"
    ):
        if make == "issgd":
            ISSGD(model, _data(), batch_size=32, super_batch_size=8)
        else:
            ISSGDCallback(model, batch_size=32, super_batch_size=8)
