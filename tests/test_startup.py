"""The startup design's fidelities follow what a cheaper run saves."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from optuna_isbo import ISBOSampler
from optuna_isbo.model import prior_target_correlation
from optuna_isbo.startup import cost_ratio_pays, design_fidelity, startup_fidelity

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
N_STARTUP = 10


def test_prior_correlation_of_the_cheapest_fidelity() -> None:
    # beta = 1 and (1 - s)^{2p} = 1 at s = 0: corr = 1 / sqrt(2); 1 at the target.
    corr = prior_target_correlation(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert corr.tolist() == pytest.approx([1 / math.sqrt(2.0), 1.0])


def _slope(cheapest_to_target: float) -> float:
    """``d log c / d s`` on ``[0, 1]`` for a cost ratio ``c(0) / c(1)``."""
    return -math.log(cheapest_to_target)


def test_cost_ratio_threshold_at_the_cheapest_level() -> None:
    # At s = 0 the threshold is corr^2 = 1/2.
    assert cost_ratio_pays(0.0, _slope(0.49))
    assert not cost_ratio_pays(0.0, _slope(0.51))


def test_interpolated_ratio_near_the_target() -> None:
    # c(0)/c(1) = 5/6 interpolates to (5/6)^0.25 = 0.955 at s = 0.75, below the prior's
    # corr^2 = 1 / (1 + 0.25^3) = 0.985 there; at s = 0.5, 0.913 is above 1 / (1 + 0.5^3).
    assert cost_ratio_pays(0.75, _slope(5 / 6))
    assert not cost_ratio_pays(0.5, _slope(5 / 6))


def test_design_fidelity_until_two_fidelities_have_costs() -> None:
    for u in (0.1, 0.6, 0.8, 0.99):
        expected = design_fidelity(GRID, u)
        assert startup_fidelity(GRID, u, []) == expected
        assert startup_fidelity(GRID, u, [(0.0, 5.0), (0.0, 5.0)]) == expected


@pytest.mark.parametrize(
    ("observed", "kept"),
    [
        ([(0.0, 1.0), (0.5, 8.5)], True),  # 1 + 30 s^2: extrapolated c(0)/c(1) = 1/72
        ([(0.0, 5.0), (0.25, 5.25)], False),  # 5 + s: extrapolated 0.82
        ([(0.0, 5.0), (1.0, 6.0), (1.0, 6.2)], False),  # measured 5/6
        ([(0.25, 3.0), (0.5, 2.0)], False),  # the dearer level is the cheaper one
    ],
)
def test_cheap_design_level_kept_only_when_it_pays(
    observed: list[tuple[float, float]], kept: bool
) -> None:
    u = 0.1  # the design's level is s = 0
    assert design_fidelity(GRID, u) == 0.0
    assert startup_fidelity(GRID, u, observed) == (0.0 if kept else 1.0)


def _startup_levels(cost_of_s: str, seed: int) -> list[float]:
    """Unit fidelities of the startup trials of a study with cost ``5 + s`` or ``1 + 30 s^2``."""
    sampler = ISBOSampler(seed=seed, n_startup_trials=N_STARTUP, fidelity_param="n_steps")
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        n = trial.suggest_int("n_steps", 1, 16, log=True)
        s = math.log2(n) / 4
        trial.set_user_attr("isbo:cost", 5.0 + s if cost_of_s == "affine" else 1.0 + 30 * s**2)
        return (x - 0.3) ** 2 + 0.1 * (1 - s)

    study.optimize(objective, n_trials=N_STARTUP)
    return [math.log2(t.params["n_steps"]) / 4 for t in study.trials]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affine_cost_startup_runs_mostly_at_the_target(seed: int) -> None:
    # Under 5 + s only s = 0.75 pays; s = 0, 0.25 and 0.5 do not. The rule applies once two
    # fidelities have costs, so at most the first two trials follow the design regardless.
    levels = _startup_levels("affine", seed)
    first_two = 2 if levels[0] != levels[1] else 3
    assert all(s in (0.75, 1.0) for s in levels[first_two:])
    assert sum(s == 1.0 for s in levels) >= N_STARTUP // 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steep_cost_startup_keeps_the_cheap_design(seed: int) -> None:
    levels = _startup_levels("steep", seed)
    design_seed = ISBOSampler(seed=seed)._seed + 1  # the design's own seed
    u = torch.quasirandom.SobolEngine(1, scramble=True, seed=design_seed).draw(
        N_STARTUP, dtype=torch.float64
    )[:, 0]
    design = [design_fidelity(GRID, float(v)) for v in u]
    assert levels == design
    assert sum(s < 1.0 for s in levels) >= N_STARTUP // 2
