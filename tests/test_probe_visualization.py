"""Non-finite values in :func:`optuna_isbo.visualization.plot_cost_history`."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from optuna_isbo.visualization import plot_cost_history


def _study(values: list[float], direction: str) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value in values:
        study.add_trial(
            create_trial(
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0.0, 1.0)},
                value=value,
                user_attrs={"isbo:cost": 1.0},
            )
        )
    return study


@pytest.mark.parametrize(
    ("direction", "values", "expected"),
    [
        ("minimize", [3.0, -math.inf, 1.0, 0.5], [3.0, 3.0, 1.0, 0.5]),
        ("maximize", [3.0, math.inf, 1.0, 5.0], [3.0, 3.0, 3.0, 5.0]),
        ("minimize", [math.inf, 2.0, 1.0], [math.nan, 2.0, 1.0]),
    ],
)
def test_best_value_line_ignores_non_finite_values(
    direction: str, values: list[float], expected: list[float]
) -> None:
    """As the sampler does, a trial completed at an infinite value is not a best value."""
    figure = plot_cost_history(_study(values, direction), fidelity_param=None)
    best = list(figure.data[-1].y)
    assert best == pytest.approx(expected, nan_ok=True)
    assert list(figure.data[0].y) == values


def test_non_finite_values_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    optuna.logging.enable_propagation()
    try:
        plot_cost_history(_study([1.0, -math.inf], "minimize"), fidelity_param=None)
    finally:
        optuna.logging.disable_propagation()
    assert "non-finite" in caplog.text
    assert "1" in caplog.text
