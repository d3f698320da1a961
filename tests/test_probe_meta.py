"""Outlying values in the studies given to :func:`optuna_isbo.meta.fit_prior`."""

from __future__ import annotations

import math

import optuna
import pytest

from optuna_isbo.meta import fit_prior


def _task(seed: int, outlier: float | None, *, diverged: bool = False) -> optuna.Study:
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=seed), study_name=f"task-{seed}"
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -3.0, 3.0)
        fidelity = trial.suggest_int("super_batch_size", 32, 512, log=True)
        if outlier is not None and trial.number == 3:
            if diverged:
                trial.set_user_attr("isbo:diverged", True)
            return outlier
        return (x - 1.0) ** 2 + 0.3 / math.log2(fidelity)

    study.optimize(objective, n_trials=12)
    return study


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("diverged", [False, True])
def test_one_outlying_value_does_not_set_the_prior_scale(diverged: bool) -> None:
    """One run reported at ``1e12`` (a diverged loss) is tamed as the sampler tames it."""
    clean = fit_prior([_task(i, None) for i in range(3)], mean="linear")
    tainted = fit_prior([_task(i, 1e12 if i == 0 else None, diverged=diverged) for i in range(3)])
    assert tainted.y_scale < 10.0 * clean.y_scale
    # The mean function still sees that values grow away from x = 1.
    weight = float(tainted.mean_function.weights["weight"][0])
    assert abs(weight) > 0.1
