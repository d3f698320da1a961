"""The digits CNN tuning task of ``benchmarks/bench_nn_tuning.py`` and ``tests/test_diverged.py``.

A small CNN (``small_cnn`` of ``examples/small_nets.py``, flatten head) trained on real handwritten
digits (``load_digits_splits`` of ``examples/digits_data.py``) for a fixed number of steps with
:class:`optuna_isbo.ISSGD`, minibatch size ``BATCH_SIZE``. The hyperparameters are the learning
rate, the SGD momentum, the weight decay and the network width; the super-batch size ``B``
(from ``BATCH_SIZE``, which is uniform SGD, to ``TARGET_SUPER_BATCH``) is the fidelity. The
objective is the validation error.

A run whose training loss becomes non-finite is a result, not a missing value: the objective
completes the trial at ``DIVERGED_ERROR`` (1.0, the worst possible error rate) with the user
attribute ``isbo:diverged`` set to ``True``, so the sampler's model learns that the region is
bad instead of sampling it again. A pruned trial would be ignored by ``ISBOSampler``, which
could then keep proposing a learning rate that always diverges. ``DIVERGED_ERROR``,
``DIVERGED_ATTR``, ``TrainingDiverged`` and ``report_diverged`` live in ``examples/diverged.py``
(shared with ``examples/fashion_task.py``) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch
from digits_data import DigitsSplits
from diverged import DIVERGED_ATTR, DIVERGED_ERROR, TrainingDiverged, report_diverged
from small_nets import small_cnn
from torch import nn
from torch.utils.data import TensorDataset

from optuna_isbo import ISSGD

BATCH_SIZE = 32
N_STEPS = 400
TARGET_SUPER_BATCH = 16 * BATCH_SIZE
FIDELITY = "super_batch_size"

__all__ = [
    "BATCH_SIZE",
    "DIVERGED_ATTR",
    "DIVERGED_ERROR",
    "FIDELITY",
    "N_STEPS",
    "TARGET_SUPER_BATCH",
    "TrainingDiverged",
    "error_rate",
    "make_objective",
    "report_diverged",
    "suggest_hyperparameters",
    "train",
]

StepCallback = Callable[[int, nn.Module], None]
"""Called as ``callback(step, model)`` after every optimizer step (``step`` counts from 1)."""


def error_rate(model: nn.Module, data: TensorDataset) -> float:
    """Fraction of misclassified samples of ``data``."""
    inputs, targets = data.tensors
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in inputs.split(1024)])
    model.train()
    return float((predictions != targets).float().mean())


def suggest_hyperparameters(trial: optuna.Trial, *, fidelity: bool = True) -> dict[str, Any]:
    """Suggest ``lr``, ``momentum``, ``weight_decay``, ``width`` and, if asked, the fidelity."""
    params: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 1e-3, 0.5, log=True),
        "momentum": trial.suggest_float("momentum", 0.0, 0.95),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "width": trial.suggest_int("width", 4, 24, log=True),
    }
    if fidelity:
        params[FIDELITY] = trial.suggest_int(FIDELITY, BATCH_SIZE, TARGET_SUPER_BATCH, log=True)
    return params


def train(
    params: dict[str, Any],
    splits: DigitsSplits,
    seed: int,
    *,
    n_steps: int = N_STEPS,
    callback: StepCallback | None = None,
) -> tuple[nn.Module, ISSGD]:
    """Train ``small_cnn`` with ISSGD under ``params``; returns the model and its ISSGD.

    ``params[FIDELITY] == BATCH_SIZE`` is uniform SGD. A non-finite training loss raises
    :class:`TrainingDiverged` (an :class:`optuna.TrialPruned`); ``callback`` may raise to stop
    training early.
    """
    torch.manual_seed(seed)
    model = small_cnn(
        params["width"],
        image_size=splits.image_size,
        n_classes=splits.n_classes,
        head="flatten",
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=params["lr"],
        momentum=params["momentum"],
        weight_decay=params["weight_decay"],
    )
    # tau_threshold=1: importance sampling is on whenever the scores are skewed at all, so that
    # the super-batch size really sets the quality (and the cost) of a run.
    issgd = ISSGD(
        model,
        splits.train,
        batch_size=BATCH_SIZE,
        super_batch_size=params[FIDELITY],
        tau_threshold=1.0,
        seed=seed,
    )
    diverged_at = None
    for step, (inputs, targets, weights) in enumerate(issgd.batches(n_steps), start=1):
        optimizer.zero_grad()
        loss = issgd.weighted_loss(model(inputs), targets, weights)
        if not torch.isfinite(loss):
            # Leave the loop first: closing the batch generator books this step's seconds.
            diverged_at = step
            break
        loss.backward()
        optimizer.step()
        if callback is not None:
            callback(step, model)
    if diverged_at is not None:
        raise TrainingDiverged(diverged_at, issgd)
    return model, issgd


def make_objective(splits: DigitsSplits) -> Callable[[optuna.Trial], float]:
    """The task's objective: ISSGD at the suggested fidelity, seeded by the trial number.

    A diverged run completes the trial at ``DIVERGED_ERROR`` (see :func:`report_diverged`).
    """

    def objective(trial: optuna.Trial) -> float:
        params = suggest_hyperparameters(trial)
        try:
            model, issgd = train(params, splits, seed=trial.number)
        except TrainingDiverged as diverged:
            return report_diverged(trial, diverged)
        issgd.report(trial)
        return error_rate(model, splits.validation)

    return objective
