"""Tests of :mod:`optuna_isbo.optim`."""

from __future__ import annotations

import itertools

import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_isbo.acquisition import AcquisitionFunc
from optuna_isbo.optim import maximize_acquisition, perturb, refine_continuous
from optuna_isbo.search_space import SearchSpace


def _space() -> SearchSpace:
    return SearchSpace(
        {
            "a_float": FloatDistribution(-1.0, 1.0),
            "b_int": IntDistribution(0, 10),
            "c_cat": CategoricalDistribution(("x", "y", "z")),
            "budget": IntDistribution(1, 64),
        },
        fidelity_param="budget",
    )


CATEGORY_BONUS = torch.tensor([0.0, 0.3, 0.1], dtype=torch.float64)
FLOAT_OPT, INT_OPT, S_OPT = 0.37, 0.64, 0.55


def _objective(space: SearchSpace) -> tuple[int, int, slice]:
    cols = space.param_columns
    return cols["a_float"].start, cols["b_int"].start, cols["c_cat"]


def _acquisition(space: SearchSpace) -> AcquisitionFunc:
    i_float, i_int, cat = _objective(space)

    def acq(C: torch.Tensor) -> torch.Tensor:
        return (
            -((C[:, i_float] - FLOAT_OPT) ** 2)
            - (C[:, i_int] - INT_OPT) ** 2
            + C[:, cat] @ CATEGORY_BONUS
            - (C[:, -1] - S_OPT) ** 2
        )

    return acq


def _best(space: SearchSpace, grid: torch.Tensor) -> tuple[float, int]:
    """Brute force over the int values, categories and fidelity levels (float at its optimum).

    Returns the maximum and the maximizing value of ``b_int``.
    """
    _, i_int, _ = _objective(space)
    best, best_b = -float("inf"), -1
    for b, c, s in itertools.product(range(11), range(3), grid.tolist()):
        x, _ = space.encode_params({"a_float": 0.0, "b_int": b, "c_cat": "xyz"[c], "budget": 1})
        value = float(-((x[i_int] - INT_OPT) ** 2) + CATEGORY_BONUS[c] - (s - S_OPT) ** 2)
        if value > best:
            best, best_b = value, b
    return best, best_b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maximize_acquisition_finds_known_maximum(seed: int) -> None:
    space = _space()
    grid = space.fidelity_grid(7)
    result = maximize_acquisition(
        _acquisition(space),
        space,
        fidelity_grid=grid,
        seed_points=torch.zeros(0, space.dim, dtype=torch.float64),
        generator=torch.Generator().manual_seed(seed),
        sobol_seed=seed,
    )
    best, best_b = _best(space, grid)
    # The discrete part (int, category, fidelity level) must be exactly optimal; the float
    # coordinate within 0.01 of 0.37 costs at most 1e-4, the smallest local step's scale.
    assert result.value >= best - 1e-4
    assert result.value <= best + 1e-12
    i_float, _, _ = _objective(space)
    assert abs(float(result.x[i_float]) - FLOAT_OPT) < 0.01
    assert result.s in grid.tolist()
    # The reported value is the acquisition at the reported point.
    C = torch.cat([result.x, torch.tensor([result.s], dtype=torch.float64)])[None]
    assert result.value == pytest.approx(float(_acquisition(space)(C)[0]), abs=1e-12)
    params = space.decode(result.x, result.s)
    for name, distribution in space.distributions.items():
        assert distribution._contains(distribution.to_internal_repr(params[name]))
    assert params["c_cat"] == "y"
    assert params["b_int"] == best_b


def test_maximize_acquisition_uses_seed_points_without_fidelity() -> None:
    space = SearchSpace({"a_float": FloatDistribution(0.0, 1.0)})
    target = 0.8123

    def acq(C: torch.Tensor) -> torch.Tensor:
        # A narrow peak that 4 Sobol points would miss; the seed point lies next to it.
        return torch.exp(-(((C[:, 0] - target) / 0.003) ** 2))

    result = maximize_acquisition(
        acq,
        space,
        fidelity_grid=torch.ones(1, dtype=torch.float64),
        seed_points=torch.tensor([[0.81]], dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
        sobol_seed=0,
        n_sobol=4,
    )
    assert result.s == 1.0
    # exp(-(0.0021 / 0.003)^2) = 0.61 at the seed point; the local search must improve on it.
    assert result.value > 0.9


def test_perturb_returns_snapped_points_in_the_cube() -> None:
    space = _space()
    gen = torch.Generator().manual_seed(0)
    X = space.sample_sobol(64, seed=0)
    for step in (0.01, 0.3, 2.0):
        out = perturb(X, space, step=step, generator=gen)
        assert out.shape == X.shape
        assert ((out >= 0.0) & (out <= 1.0)).all()
        assert torch.equal(space.snap(out), out)
        _, _, cat = _objective(space)
        assert torch.equal(out[:, cat].sum(1), torch.ones(64, dtype=torch.float64))
        assert not torch.equal(out, X)
    # Small steps stay local on the continuous column.
    i_float, _, _ = _objective(space)
    out = perturb(X, space, step=0.01, generator=gen)
    assert (out[:, i_float] - X[:, i_float]).abs().max() < 0.06  # 6 sd of the step


def test_refine_continuous_moves_only_continuous_columns_to_the_optimum() -> None:
    space = SearchSpace(
        {
            "a": FloatDistribution(0.0, 1.0),
            "b": FloatDistribution(1e-3, 1.0, log=True),
            "n": IntDistribution(0, 10),
            "c": CategoricalDistribution(("x", "y")),
        }
    )
    cols = space.param_columns
    i_a, i_b, i_n = cols["a"].start, cols["b"].start, cols["n"].start
    scale = 1e-6  # nats per second can be tiny; the refinement must not stop on that

    def acq(C: torch.Tensor) -> torch.Tensor:
        # Interior optimum in ``a``, boundary optimum in ``b``; ``n`` would prefer 0.5.
        return scale * (-((C[:, i_a] - 0.37) ** 2) + C[:, i_b] - (C[:, i_n] - 0.5) ** 2)

    X = space.snap(space.sample_sobol(3, seed=0))
    X_ref, values = refine_continuous(acq, space, X, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(X_ref[:, i_a], torch.full((3,), 0.37, dtype=torch.float64), atol=1e-5)
    assert torch.equal(X_ref[:, i_b], torch.ones(3, dtype=torch.float64))  # exactly the bound
    # Grid and categorical columns are not moved, and the values are the acquisition's.
    others = ~space.continuous_mask
    assert torch.equal(X_ref[:, others], X[:, others])
    assert torch.allclose(values, acq(X_ref))
    assert (values >= acq(X)).all()


def test_maximize_acquisition_with_gradients_reaches_a_corner_exactly() -> None:
    space = SearchSpace({f"x{i}": FloatDistribution(0.0, 1.0) for i in range(6)})

    def acq(C: torch.Tensor) -> torch.Tensor:
        return C.sum(1)  # maximal at the corner (1, ..., 1)

    def best(n_refine: int) -> float:
        return maximize_acquisition(
            acq,
            space,
            fidelity_grid=torch.ones(1, dtype=torch.float64),
            seed_points=torch.zeros(0, 6, dtype=torch.float64),
            generator=torch.Generator().manual_seed(0),
            sobol_seed=0,
            n_sobol=16,
            n_refine=n_refine,
        ).value

    assert best(4) == 6.0
    assert best(0) < 6.0  # random steps get close but do not land on all six bounds
