"""The training task shared by ``examples/quickstart.py`` and ``benchmarks/bench_nn_tuning.py``.

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
could then keep proposing a learning rate that always diverges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch
from digits_data import DigitsSplits
from small_nets import small_cnn
from torch import nn
from torch.utils.data import TensorDataset

from optuna_isbo import ISSGD

BATCH_SIZE = 32
N_STEPS = 400
TARGET_SUPER_BATCH = 16 * BATCH_SIZE
FIDELITY = "super_batch_size"
DIVERGED_ERROR = 1.0
"""The value of a diverged trial: the worst possible error rate.

Worse than any trained network, even one at chance (0.9 on ten classes), so the model ranks a
diverging configuration below every one that learns; yet on the scale of the real values, so
that it does not flatten them when the GP standardizes the observations (as a huge penalty
would; an infinite one would be dropped by the sampler).
"""
DIVERGED_ATTR = "isbo:diverged"

StepCallback = Callable[[int, nn.Module], None]
"""Called as ``callback(step, model)`` after every optimizer step (``step`` counts from 1)."""


class TrainingDiverged(optuna.TrialPruned):
    """The training loss became non-finite at ``step``.

    Raised by :func:`train`, with the run's :class:`~optuna_isbo.ISSGD` so that its cost can
    still be reported. It subclasses :class:`optuna.TrialPruned` so that an objective that does
    not handle it prunes the trial, as before; :func:`make_objective` handles it with
    :func:`report_diverged`.
    """

    def __init__(self, step: int, issgd: ISSGD) -> None:
        super().__init__(f"the training loss diverged at step {step}")
        self.step = step
        self.issgd = issgd


def report_diverged(trial: optuna.Trial, diverged: TrainingDiverged) -> float:
    """Record a diverged run on ``trial``; return the value to complete it with.

    Writes the run's cost (:meth:`ISSGD.report <optuna_isbo.ISSGD.report>`, the seconds spent
    until the divergence), ``isbo:diverged = True`` and ``isbo:diverged_step``, and returns
    ``DIVERGED_ERROR``.

    The cost written is the one actually spent, so a diverged run looks cheap to the sampler's
    cost model; with ``acquisition="es"`` that can keep the region worth probing per second
    (``tests/test_diverged.py`` measures it; ``"mes"`` moves away).
    """
    diverged.issgd.report(trial)
    trial.set_user_attr(DIVERGED_ATTR, True)
    trial.set_user_attr("isbo:diverged_step", diverged.step)
    return DIVERGED_ERROR


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
    """The quickstart objective: ISSGD at the suggested fidelity, seeded by the trial number.

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
