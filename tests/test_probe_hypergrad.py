"""Bounds and data forms of :func:`optuna_isbo.learn_schedules` found by probing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optuna_isbo import learn_schedules
from optuna_isbo.hypergrad import OuterStep


def _diverging_regression() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 6, generator=generator)
    return inputs, 100.0 * inputs[:, :1]


def test_lr_halving_after_divergence_stays_within_lr_bounds() -> None:
    """Diverged first runs halve the learning rate, but never below ``lr_bounds[0]``."""
    data = _diverging_regression()
    steps: list[OuterStep] = []
    with pytest.raises(RuntimeError, match="diverged"):
        learn_schedules(
            lambda: nn.Linear(6, 1),
            data,
            data,
            n_steps=20,
            n_blocks=2,
            batch_size=16,
            n_outer_steps=4,
            loss_fn=F.mse_loss,
            lr_init=5.0,
            lr_bounds=(4.0, 10.0),
            learn=("momentum",),
            callback=steps.append,
        )
    assert steps
    assert all(min(step.schedules.lr) >= 4.0 for step in steps)
    # At the lower bound a deterministic run diverges again: it is not retried.
    assert len(steps) == 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_unsigned_integer_numpy_labels_are_class_indices(dtype: type) -> None:
    """NumPy labels of any integer dtype (``uint8`` as IDX files store them) become longs."""
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(64, 4)).astype(np.float32)
    labels = (inputs[:, 0] > 0).astype(dtype)
    schedules = learn_schedules(
        lambda: nn.Linear(4, 2),
        (inputs, labels),
        (inputs, labels),
        n_steps=4,
        n_blocks=2,
        batch_size=8,
        n_outer_steps=1,
    )
    assert schedules.n_steps == 4


def test_uint8_numpy_inputs_keep_their_dtype() -> None:
    """Only the targets are class indices: ``uint8`` input pixels are not widened."""
    from optuna_isbo.hypergrad import _as_tensors

    pixels = np.zeros((5, 3), dtype=np.uint8)
    labels = np.zeros(5, dtype=np.uint8)
    inputs, targets = _as_tensors((pixels, labels), "train_data", nn.Linear(3, 2))
    assert inputs.dtype == torch.uint8
    assert targets.dtype == torch.long
