from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_isbo.search_space import SearchSpace


def _all_kinds() -> dict[str, BaseDistribution]:
    return {
        "float": FloatDistribution(-2.0, 3.0),
        "float_log": FloatDistribution(1e-5, 1.0, log=True),
        "float_step": FloatDistribution(0.0, 1.0, step=0.1),
        "float_step_odd": FloatDistribution(0.05, 0.95, step=0.15),
        "float_step_int_like": FloatDistribution(1.0, 9.0, step=2.0),
        "int": IntDistribution(-3, 7),
        "int_log": IntDistribution(1, 1000, log=True),
        "int_log_narrow": IntDistribution(2, 5, log=True),
        "int_step": IntDistribution(0, 20, step=4),
        "int_two": IntDistribution(0, 1),
        "cat": CategoricalDistribution((1, "a", None)),
        "cat_bool": CategoricalDistribution((True, False)),
        "cat_float": CategoricalDistribution((0.5, 2.5, -1.0, 7.0)),
        "single_float": FloatDistribution(0.5, 0.5),
        "single_int": IntDistribution(4, 4),
        "single_cat": CategoricalDistribution(("only",)),
        "single_step": FloatDistribution(0.0, 0.0, step=0.1),
    }


def _grid_values(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    assert distribution.step is not None
    n = round((distribution.high - distribution.low) / distribution.step) + 1
    if isinstance(distribution, IntDistribution):
        return [distribution.low + k * distribution.step for k in range(n)]
    # The values a user would write (0.3, not 0.30000000000000004).
    return [float(f"{distribution.low + k * distribution.step:.12g}") for k in range(n)]


def _is_valid(distribution: BaseDistribution, value: Any) -> bool:
    return distribution._contains(distribution.to_internal_repr(value))


def test_columns_and_masks() -> None:
    space = SearchSpace(_all_kinds())
    assert space.names == sorted(_all_kinds())
    assert space.fidelity_param is None
    widths = {name: cols.stop - cols.start for name, cols in space.param_columns.items()}
    assert widths["cat"] == 3 and widths["cat_bool"] == 2 and widths["cat_float"] == 4
    for name in ("single_float", "single_int", "single_cat", "single_step"):
        assert widths[name] == 0
    for name in ("float", "float_log", "float_step", "int", "int_log", "int_step", "int_two"):
        assert widths[name] == 1
    assert space.dim == sum(widths.values())
    # Columns are contiguous and in name order.
    starts = [space.param_columns[name].start for name in space.names]
    assert starts == sorted(starts)
    expected_continuous = torch.zeros(space.dim, dtype=torch.bool)
    expected_continuous[space.param_columns["float"]] = True
    expected_continuous[space.param_columns["float_log"]] = True
    assert torch.equal(space.continuous_mask, expected_continuous)
    assert space.categorical_slices == [
        space.param_columns[name] for name in ("cat", "cat_bool", "cat_float")
    ]


@pytest.mark.parametrize(
    "name",
    [
        "float_step",
        "float_step_odd",
        "float_step_int_like",
        "int",
        "int_log",
        "int_log_narrow",
        "int_step",
        "int_two",
        "cat",
        "cat_bool",
        "cat_float",
    ],
)
def test_round_trip_is_exact_for_discrete(name: str) -> None:
    distribution = _all_kinds()[name]
    space = SearchSpace({name: distribution})
    values = _grid_values(distribution)
    encoded = []
    for value in values:
        x, s = space.encode_params({name: value})
        assert s == 1.0
        decoded = space.decode(x, s)[name]
        assert decoded == value and type(decoded) is type(value)
        encoded.append(x)
    # Distinct values get distinct encodings, each already snapped.
    X = torch.stack(encoded)
    assert torch.unique(X, dim=0).shape[0] == len(values)
    assert torch.equal(space.snap(X), X)


@pytest.mark.parametrize("name", ["float", "float_log"])
def test_round_trip_continuous(name: str) -> None:
    distribution = _all_kinds()[name]
    assert isinstance(distribution, FloatDistribution)
    space = SearchSpace({name: distribution})
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(200, generator=generator, dtype=torch.float64)
    low, high = distribution.low, distribution.high
    if distribution.log:
        values = torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        values = low + u * (high - low)
    for value in [low, high, *values.tolist()]:
        x, _ = space.encode_params({name: value})
        assert 0.0 <= float(x[0]) <= 1.0
        decoded = space.decode(x, 1.0)[name]
        # encode-then-decode is an affine map and its inverse (of log v when log): a few ulps.
        assert decoded == pytest.approx(value, rel=1e-12, abs=1e-15)
        assert _is_valid(distribution, decoded)
    assert space.decode(torch.zeros(1, dtype=torch.float64), 1.0)[name] == low
    assert space.decode(torch.ones(1, dtype=torch.float64), 1.0)[name] == high


def test_decode_of_random_points_is_always_valid() -> None:
    distributions = _all_kinds()
    distributions["B"] = IntDistribution(16, 4096, log=True)
    space = SearchSpace(distributions, fidelity_param="B")
    generator = torch.Generator().manual_seed(1)
    n = 1000
    # Mostly inside the cube, some outside it (an optimizer may overshoot), plus the corners.
    X = torch.rand(n, space.dim, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    X = torch.cat([X, torch.zeros(1, space.dim), torch.ones(1, space.dim)]).double()
    s = torch.rand(X.shape[0], generator=generator, dtype=torch.float64) * 1.4 - 0.2
    for x, s_i in zip(X, s.tolist(), strict=True):
        params = space.decode(x, s_i)
        assert set(params) == set(distributions)
        for name, value in params.items():
            assert _is_valid(distributions[name], value), (name, value)
        assert params["B"] <= space.target_fidelity


def test_snap_is_idempotent_and_keeps_decoded_values() -> None:
    space = SearchSpace(_all_kinds())
    generator = torch.Generator().manual_seed(2)
    X = torch.rand(300, space.dim, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    snapped = space.snap(X)
    assert snapped.shape == X.shape and snapped.dtype == torch.float64
    assert torch.equal(space.snap(snapped), snapped)
    assert ((snapped >= 0.0) & (snapped <= 1.0)).all()
    for x, x_snapped in zip(X, snapped, strict=True):
        assert space.decode(x, 1.0) == space.decode(x_snapped, 1.0)
        # The snapped point is the encoding of the decoded point.
        encoded, _ = space.encode_params(space.decode(x, 1.0))
        assert torch.allclose(encoded, x_snapped, rtol=0.0, atol=1e-12)
    for block in space.categorical_slices:
        assert torch.equal(snapped[:, block].sum(dim=1), torch.ones(X.shape[0], dtype=X.dtype))
    continuous = space.continuous_mask
    assert torch.equal(snapped[:, continuous], X[:, continuous].clamp(0.0, 1.0))


@pytest.mark.parametrize(
    "distribution",
    [
        FloatDistribution(0.0, 1.0, step=0.1),
        IntDistribution(-3, 7),
        IntDistribution(0, 20, step=4),
    ],
)
def test_linear_grid_values_own_equal_cells(distribution: BaseDistribution) -> None:
    space = SearchSpace({"p": distribution})
    values = _grid_values(distribution)
    n_values, per_cell = len(values), 7
    # Midpoints of n_values * per_cell equal sub-cells: each value must own exactly per_cell.
    u = (torch.arange(n_values * per_cell, dtype=torch.float64) + 0.5) / (n_values * per_cell)
    decoded = [space.decode(u_i.reshape(1), 1.0)["p"] for u_i in u]
    assert decoded == [value for value in values for _ in range(per_cell)]
    encoded = torch.cat([space.encode_params({"p": value})[0] for value in values])
    expected = (torch.arange(n_values, dtype=torch.float64) + 0.5) / n_values
    assert torch.allclose(encoded, expected, rtol=0.0, atol=1e-15)


def test_log_int_cells_are_half_step_padded_in_log_space() -> None:
    low, high = 2, 9
    space = SearchSpace({"n": IntDistribution(low, high, log=True)})
    log_low, log_high = math.log(low - 0.5), math.log(high + 0.5)
    for value in range(low, high + 1):
        x, _ = space.encode_params({"n": value})
        assert float(x[0]) == pytest.approx((math.log(value) - log_low) / (log_high - log_low))
        # Just inside both edges of the cell [value - 1/2, value + 1/2] (in log space).
        for edge, inward in ((value - 0.5, 1.0), (value + 0.5, -1.0)):
            u = (math.log(edge) - log_low) / (log_high - log_low) + inward * 1e-9
            decoded = space.decode(torch.tensor([u], dtype=torch.float64), 1.0)["n"]
            assert decoded == value


def test_single_valued_distributions_decode_to_their_value() -> None:
    distributions: dict[str, BaseDistribution] = {
        "single_float": FloatDistribution(0.5, 0.5),
        "single_int": IntDistribution(4, 4),
        "single_cat": CategoricalDistribution(("only",)),
        "single_log": IntDistribution(3, 3, log=True),
    }
    space = SearchSpace(distributions)
    assert space.dim == 0
    x, s = space.encode_params(
        {"single_float": 0.5, "single_int": 4, "single_cat": "only", "single_log": 3}
    )
    assert x.shape == (0,) and s == 1.0
    assert space.decode(x, s) == {
        "single_float": 0.5,
        "single_int": 4,
        "single_cat": "only",
        "single_log": 3,
    }
    assert space.snap(torch.empty(3, 0)).shape == (3, 0)
    assert space.sample_sobol(4, seed=0).shape == (4, 0)


def test_out_of_distribution_values_are_clipped() -> None:
    distributions: dict[str, BaseDistribution] = {
        "f": FloatDistribution(0.0, 1.0),
        "g": FloatDistribution(1e-3, 1.0, log=True),
        "i": IntDistribution(0, 10, step=2),
        "l": IntDistribution(1, 100, log=True),
        "c": CategoricalDistribution(("a", "b", "c", "d")),
        "B": IntDistribution(8, 512),
    }
    space = SearchSpace(distributions, fidelity_param="B", target_fidelity=256)
    low_x, low_s = space.encode_params({"f": -3.0, "g": 1e-9, "i": -7, "l": 0, "c": "z", "B": 1})
    high_x, high_s = space.encode_params(
        {"f": 5.0, "g": 10.0, "i": 99, "l": 10**6, "c": "z", "B": 512}
    )
    assert low_s == 0.0 and high_s == 1.0  # above the target counts as the target
    assert space.decode(low_x, low_s) | {"c": None} == {
        "f": 0.0,
        "g": 1e-3,
        "i": 0,
        "l": 1,
        "c": None,
        "B": 8,
    }
    assert space.decode(high_x, high_s) | {"c": None} == {
        "f": 1.0,
        "g": 1.0,
        "i": 10,
        "l": 100,
        "c": None,
        "B": 256,
    }
    # An unknown choice sits at the centre of its one-hot block.
    block = space.param_columns["c"]
    assert torch.equal(low_x[block], torch.full((4,), 0.25, dtype=torch.float64))
    # Off-grid values go to the nearest grid value.
    x, _ = space.encode_params({"f": 0.5, "g": 0.1, "i": 5.1, "l": 10, "c": "a", "B": 64})
    assert space.decode(x, 1.0)["i"] == 6


def test_encode_trials_matches_encode_params() -> None:
    distributions: dict[str, BaseDistribution] = {
        "x": FloatDistribution(-1.0, 1.0),
        "k": IntDistribution(1, 64, log=True),
        "c": CategoricalDistribution((1, "a", None)),
        "B": IntDistribution(32, 2048, log=True),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        study.tell(study.ask(distributions), 0.0)
    space = SearchSpace(distributions, fidelity_param="B")
    X, s = space.encode_trials(study.trials)
    assert X.shape == (6, space.dim) and s.shape == (6,)
    assert X.dtype == torch.float64 and s.dtype == torch.float64
    for i, frozen in enumerate(study.trials):
        x_i, s_i = space.encode_params(frozen.params)
        assert torch.equal(X[i], x_i) and float(s[i]) == s_i
        assert s_i == pytest.approx(math.log(frozen.params["B"] / 32) / math.log(2048 / 32))
        decoded = space.decode(X[i], s_i)
        for name in ("k", "c", "B"):
            assert decoded[name] == frozen.params[name]
    X0, s0 = space.encode_trials([])
    assert X0.shape == (0, space.dim) and s0.shape == (0,)


def test_missing_param_and_bad_shapes_raise() -> None:
    space = SearchSpace({"x": FloatDistribution(0.0, 1.0), "B": IntDistribution(1, 8)}, "B")
    with pytest.raises(ValueError, match="'x'"):
        space.encode_params({"B": 4})
    with pytest.raises(ValueError, match="'B'"):
        space.encode_params({"x": 0.5})
    with pytest.raises(ValueError, match="`x`"):
        space.decode(torch.zeros(2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="`X`"):
        space.snap(torch.zeros(3, dtype=torch.float64))


# ---- fidelity -----------------------------------------------------------------------------


def test_fidelity_is_normalized_log_and_excluded_from_x() -> None:
    space = SearchSpace(
        {"lr": FloatDistribution(1e-3, 1.0, log=True), "B": IntDistribution(10, 10_000)},
        fidelity_param="B",
        target_fidelity=1000,
    )
    assert space.names == ["lr"] and space.dim == 1
    assert space.fidelity_param == "B"
    assert space.fidelity_low == 10 and space.target_fidelity == 1000
    assert space.fidelity_to_unit(10) == 0.0
    assert space.fidelity_to_unit(1000) == 1.0
    assert space.fidelity_to_unit(100) == pytest.approx(0.5)
    assert space.fidelity_to_unit(5000) == 1.0
    assert space.unit_to_fidelity(0.5) == 100
    assert space.unit_to_fidelity(1.0) == 1000 and space.unit_to_fidelity(1.7) == 1000
    assert space.unit_to_fidelity(-0.3) == 10
    params = space.decode(torch.tensor([0.5], dtype=torch.float64), 0.25)
    assert params["B"] == round(10**1.5) and isinstance(params["B"], int)


def test_fidelity_round_trip_over_grid_values() -> None:
    for distribution in (
        IntDistribution(1, 300),
        IntDistribution(2, 256, log=True),
        IntDistribution(5, 95, step=10),
        FloatDistribution(0.1, 1.0, step=0.1),
    ):
        space = SearchSpace({"B": distribution}, fidelity_param="B")
        values = _grid_values(distribution)
        units = [space.fidelity_to_unit(value) for value in values]
        assert units == sorted(units) and units[0] == 0.0 and units[-1] == 1.0
        assert [space.unit_to_fidelity(s) for s in units] == values


def test_fidelity_default_target_and_float_fidelities() -> None:
    space = SearchSpace({"B": FloatDistribution(0.01, 1.0)}, fidelity_param="B")
    assert space.target_fidelity == 1.0
    assert space.unit_to_fidelity(0.5) == pytest.approx(0.1)
    log_space = SearchSpace({"B": FloatDistribution(1.0, 100.0, log=True)}, fidelity_param="B")
    assert log_space.fidelity_to_unit(10.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "distribution, n_max",
    [
        (IntDistribution(128, 135), 8),
        (IntDistribution(128, 135), 3),
        (IntDistribution(1, 60_000, log=True), 9),
        (IntDistribution(1, 20), 16),
        (IntDistribution(16, 1024, step=16), 64),
        (IntDistribution(16, 1024, step=16), 10),
        (FloatDistribution(0.1, 1.0, step=0.1), 10),
        (FloatDistribution(0.1, 1.0, step=0.1), 4),
        (FloatDistribution(1e-3, 1.0), 6),
        (FloatDistribution(1e-3, 1.0, log=True), 1),
    ],
)
def test_fidelity_grid(distribution: BaseDistribution, n_max: int) -> None:
    space = SearchSpace({"x": FloatDistribution(0, 1), "B": distribution}, fidelity_param="B")
    grid = space.fidelity_grid(n_max)
    assert grid.dtype == torch.float64 and grid.dim() == 1
    assert 1 <= grid.numel() <= n_max
    assert float(grid[-1]) == 1.0 and ((grid >= 0.0) & (grid <= 1.0)).all()
    assert (grid[1:] > grid[:-1]).all()
    values = [space.unit_to_fidelity(float(s)) for s in grid]
    assert len(set(values)) == len(values)
    assert all(_is_valid(distribution, value) for value in values)
    # Each s is exactly the encoding of the value it decodes to.
    assert [space.fidelity_to_unit(value) for value in values] == grid.tolist()
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    if distribution.step is not None:
        all_values = _grid_values(distribution)
        if len(all_values) <= n_max:
            assert values == all_values
        else:
            # n_max evenly spaced s values, rounded to the grid: each decoded value is the grid
            # value nearest to the ideal one.
            ideal = [space.unit_to_fidelity(k / (n_max - 1)) for k in range(n_max)]
            assert values == sorted(set(ideal))
    elif n_max > 1:
        assert torch.allclose(grid, torch.linspace(0, 1, n_max, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_max"):
        space.fidelity_grid(0)


def test_no_fidelity_axis() -> None:
    space = SearchSpace({"x": FloatDistribution(0, 1)})
    assert space.fidelity_param is None
    assert torch.equal(space.fidelity_grid(5), torch.ones(1, dtype=torch.float64))
    _, s = space.encode_params({"x": 0.3})
    assert s == 1.0
    with pytest.raises(ValueError, match="fidelity"):
        space.unit_to_fidelity(0.5)
    with pytest.raises(ValueError, match="fidelity"):
        space.fidelity_to_unit(3.0)


def test_fidelity_param_absent_or_single_valued_means_no_axis() -> None:
    absent = SearchSpace({"x": FloatDistribution(0, 1)}, fidelity_param="B")
    assert absent.fidelity_param is None and absent.names == ["x"]

    single = SearchSpace({"x": FloatDistribution(0, 1), "B": IntDistribution(64, 64)}, "B")
    assert single.fidelity_param is None and single.dim == 1
    assert single.decode(torch.tensor([0.5], dtype=torch.float64), 0.3)["B"] == 64

    # A target at the lowest value of a wider distribution is a mistake, not a request to tune
    # B as an ordinary hyperparameter: it is rejected, not silently reinterpreted.
    with pytest.raises(ValueError, match="lowest value"):
        SearchSpace(
            {"x": FloatDistribution(0, 1), "B": IntDistribution(64, 128)}, "B", target_fidelity=64
        )


@pytest.mark.parametrize(
    "distribution, target, match",
    [
        (CategoricalDistribution((16, 32)), None, "fidelity_param"),
        (IntDistribution(0, 100), None, "low > 0"),
        (FloatDistribution(0.0, 1.0), 0.5, "low > 0"),
        (IntDistribution(1, 100), 101, "target_fidelity"),
        (IntDistribution(1, 100), 0, "target_fidelity"),
        (IntDistribution(1, 100), 50.5, "target_fidelity"),
        (IntDistribution(0, 100, step=10), 55, "target_fidelity"),
        (FloatDistribution(0.1, 1.0, step=0.1), 0.25, "target_fidelity"),
    ],
)
def test_fidelity_errors(distribution: BaseDistribution, target: float | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSpace({"B": distribution}, fidelity_param="B", target_fidelity=target)


# ---- Sobol --------------------------------------------------------------------------------


def test_sample_sobol_is_valid_snapped_and_seeded() -> None:
    space = SearchSpace(_all_kinds())
    X = space.sample_sobol(64, seed=3)
    assert X.shape == (64, space.dim) and X.dtype == torch.float64
    assert torch.equal(space.snap(X), X)
    assert torch.equal(space.sample_sobol(64, seed=3), X)
    assert not torch.equal(space.sample_sobol(64, seed=4), X)
    for x in X:
        for name, value in space.decode(x, 1.0).items():
            assert _is_valid(space.distributions[name], value)
    assert space.sample_sobol(0, seed=0).shape == (0, space.dim)


def test_sample_sobol_balances_choices_and_grid_values() -> None:
    distributions: dict[str, BaseDistribution] = {
        "c": CategoricalDistribution(("a", "b", "c", "d")),
        "i": IntDistribution(0, 7),
        "x": FloatDistribution(0.0, 1.0),
    }
    space = SearchSpace(distributions)
    n = 64
    X = space.sample_sobol(n, seed=5)
    decoded = [space.decode(x, 1.0) for x in X]
    # The first 2^m points of a scrambled Sobol sequence project, in every coordinate, to a
    # (0, m, 1)-net: each interval [j / 2^k, (j + 1) / 2^k), k <= m, holds exactly 2^(m - k)
    # points. With 4 choices (k = 2) and 8 grid values (k = 3), n = 64 gives exactly 16 points
    # per choice and 8 per grid value.
    assert [sum(p["c"] == c for p in decoded) for c in "abcd"] == [16] * 4
    assert [sum(p["i"] == v for p in decoded) for v in range(8)] == [8] * 8
    x_column = X[:, space.param_columns["x"]].flatten()
    counts = torch.histc(x_column, bins=16, min=0.0, max=1.0)
    assert torch.equal(counts, torch.full((16,), 4.0, dtype=counts.dtype))


def test_categorical_encoding_agrees_with_optuna_for_equal_and_odd_choices() -> None:
    """The encoding looks choices up in a table; where choices compare equal across types
    (``True == 1 == 1.0``), are unhashable or NaN, it must still pick the choice Optuna's
    ``to_internal_repr`` picks (the first equal one)."""
    choices = (True, 1, 1.0, "a", None, float("nan"), (1, 2), 2.5)
    dist = CategoricalDistribution(choices)
    space = SearchSpace({"c": dist})
    columns = space.param_columns["c"]
    for value in (True, 1, 1.0, "a", None, (1, 2), 2.5):
        x, _ = space.encode_params({"c": value})
        expected = dist.to_internal_repr(value)
        assert int(torch.argmax(x[columns])) == expected
        assert float(x[columns].sum()) == 1.0
    # A value that is no choice (a stale study) keeps the uniform encoding.
    x, _ = space.encode_params({"c": "zzz"})
    assert torch.allclose(x[columns], x.new_full((len(choices),), 1.0 / len(choices)))


def test_log_grid_encoding_is_bitwise_the_tensor_formula() -> None:
    from optuna_isbo.search_space import _unit_of_grid_index

    dist = IntDistribution(3, 1000, log=True)
    space = SearchSpace({"k": dist})
    param = space._params[0]
    for value in (3, 4, 17, 999, 1000):
        x, _ = space.encode_params({"k": value})
        index = torch.tensor(float(value - 3), dtype=torch.float64)
        assert float(x[0]) == float(_unit_of_grid_index(param, index))


def test_an_int_target_of_a_float_fidelity_decodes_to_a_float() -> None:
    space = SearchSpace(
        {"x": FloatDistribution(0.0, 1.0), "frac": FloatDistribution(0.1, 1.0)},
        fidelity_param="frac",
        target_fidelity=1,
    )
    value = space.unit_to_fidelity(1.0)
    assert isinstance(value, float) and value == 1.0
    assert isinstance(
        space.decode(torch.zeros(space.dim, dtype=torch.float64), 1.0)["frac"], float
    )
