"""Diverged training runs as completed trials at the worst error: shared by the examples' tasks.

A helper module of ``examples/`` (not a script, and not part of the ``optuna_isbo`` package),
used by ``examples/digits_cnn.py`` and ``examples/fashion_task.py``.

A run whose training loss becomes non-finite is a result, not a missing value: the objective
completes the trial at :data:`DIVERGED_ERROR` (1.0, the worst possible error rate) with the user
attribute ``isbo:diverged`` set to ``True`` (:func:`report_diverged`), so the sampler's model
learns that the region is bad instead of sampling it again. A pruned trial would be ignored by
``ISBOSampler``, which could then keep proposing a learning rate that always diverges.
"""

from __future__ import annotations

import optuna

from optuna_isbo import ISSGD

__all__ = ["DIVERGED_ATTR", "DIVERGED_ERROR", "TrainingDiverged", "report_diverged"]

DIVERGED_ERROR = 1.0
"""The value of a diverged trial: the worst possible error rate.

Worse than any trained network, even one at chance (0.9 on ten classes), so the model ranks a
diverging configuration below every one that learns; yet on the scale of the real values, so
that it does not flatten them when the GP standardizes the observations (as a huge penalty
would; an infinite one would be dropped by the sampler).
"""
DIVERGED_ATTR = "isbo:diverged"
"""User attribute set to ``True`` on a trial whose training diverged."""


class TrainingDiverged(optuna.TrialPruned):
    """The training loss (or a parameter) became non-finite at ``step``.

    Raised by the tasks' ``train`` functions, with the run's :class:`~optuna_isbo.ISSGD` so that
    its cost can still be reported. It subclasses :class:`optuna.TrialPruned` so that an
    objective that does not handle it prunes the trial; the tasks' objectives handle it with
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
    :data:`DIVERGED_ERROR`.

    The cost written is the one actually spent, so a diverged run looks cheap to the sampler's
    cost model; with ``acquisition="es"`` that can keep the region worth probing per second
    (``tests/test_diverged.py`` measures it; ``"mes"`` moves away).
    """
    diverged.issgd.report(trial)
    trial.set_user_attr(DIVERGED_ATTR, True)
    trial.set_user_attr("isbo:diverged_step", diverged.step)
    return DIVERGED_ERROR
