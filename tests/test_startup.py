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


def test_cost_ratio_threshold_at_the_cheapest_level() -> None:
    # At s = 0 the threshold is corr^2 = 1/2.
    assert cost_ratio_pays(0.0, 0.0, 0.49)
    assert not cost_ratio_pays(0.0, 0.0, 0.51)


def test_interpolated_ratio_near_the_target() -> None:
    # c(0)/c(1) = 5/6 interpolates to (5/6)^0.25 = 0.955 at s = 0.75, below the prior's
    # corr^2 = 1 / (1 + 0.25^3) = 0.985 there; at s = 0.5, 0.913 is above 1 / (1 + 0.5^3).
    assert cost_ratio_pays(0.75, 0.0, 5 / 6)
    assert not cost_ratio_pays(0.5, 0.0, 5 / 6)


def test_first_two_trials_measure_both_ends() -> None:
    assert startup_fidelity(GRID, 0, 0.9, []) == 0.0
    assert startup_fidelity(GRID, 1, 0.1, []) == 1.0


def test_design_fidelity_without_cost_data() -> None:
    for u in (0.1, 0.6, 0.8, 0.99):
        assert startup_fidelity(GRID, 5, u, [(0.0, 1.0)]) == design_fidelity(GRID, u)


@pytest.mark.parametrize(
    ("cheap_cost", "kept"),
    [(1.0, True), (5.0, False)],  # target cost 31 (steep) or 6 (affine) seconds
)
def test_cheap_design_level_kept_only_when_it_pays(cheap_cost: float, kept: bool) -> None:
    target_cost = 31.0 if cheap_cost == 1.0 else 6.0
    observed = [(0.0, cheap_cost), (1.0, target_cost)]
    u = 0.1  # the design's level is s = 0
    assert design_fidelity(GRID, u) == 0.0
    assert startup_fidelity(GRID, 3, u, observed) == (0.0 if kept else 1.0)


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
    # Under 5 + s only the cheapest probe and s = 0.75 pay; s = 0.25 and 0.5 do not.
    levels = _startup_levels("affine", seed)
    assert levels[0] == 0.0 and levels[1] == 1.0
    assert all(s in (0.75, 1.0) for s in levels[2:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steep_cost_startup_keeps_the_cheap_design(seed: int) -> None:
    levels = _startup_levels("steep", seed)
    design_seed = ISBOSampler(seed=seed)._seed + 1  # the design's own seed
    u = torch.quasirandom.SobolEngine(1, scramble=True, seed=design_seed).draw(
        N_STARTUP, dtype=torch.float64
    )[:, 0]
    design = [design_fidelity(GRID, float(v)) for v in u]
    assert levels[2:] == design[2:]
    assert sum(s < 1.0 for s in levels) >= N_STARTUP // 2
