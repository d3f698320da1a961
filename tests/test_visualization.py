from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from optuna_isbo.visualization import plot_cost_history

FIDELITY_LOG = IntDistribution(16, 1024, log=True)
LR = FloatDistribution(1e-4, 1.0, log=True)
T0 = datetime.datetime(2026, 1, 1, 12, 0, 0)


def _add_trial(
    study: optuna.Study,
    *,
    value: float | None,
    fidelity: int | None,
    cost_seconds: float | None,
    duration_seconds: float = 1.0,
    state: TrialState = TrialState.COMPLETE,
    fidelity_distribution: IntDistribution = FIDELITY_LOG,
) -> None:
    params: dict[str, float | int] = {"lr": 0.01}
    distributions: dict[str, optuna.distributions.BaseDistribution] = {"lr": LR}
    if fidelity is not None:
        params["super_batch_size"] = fidelity
        distributions["super_batch_size"] = fidelity_distribution
    user_attrs = {} if cost_seconds is None else {"isbo:cost": cost_seconds}
    start = T0 + datetime.timedelta(minutes=len(study.trials))
    study.add_trial(
        FrozenTrial(
            number=len(study.trials),
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=duration_seconds),
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
            system_attrs={},
            intermediate_values={},
            trial_id=len(study.trials),
        )
    )


def _expected_history(study: optuna.Study) -> tuple[list[float], list[float], list[float]]:
    """Cumulative cost, values and best-so-far, computed from the study without numpy."""
    cumulative, values, best = [], [], []
    total = 0.0
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    best_so_far = math.inf if minimize else -math.inf
    for trial in sorted(study.trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE:
            continue
        # The larger of the cost attribute and the duration, at least 1 ms.
        assert trial.datetime_complete is not None and trial.datetime_start is not None
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        total += max(trial.user_attrs.get("isbo:cost", 0.0), duration, 1e-3)
        assert trial.value is not None
        if minimize:
            best_so_far = min(best_so_far, trial.value)
        else:
            best_so_far = max(best_so_far, trial.value)
        cumulative.append(total)
        values.append(trial.value)
        best.append(best_so_far)
    return cumulative, values, best


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_plot_cost_history_matches_study(direction: Literal["minimize", "maximize"]) -> None:
    study = optuna.create_study(direction=direction)
    _add_trial(study, value=0.5, fidelity=16, cost_seconds=2.0)
    _add_trial(study, value=0.7, fidelity=1024, cost_seconds=30.5)
    _add_trial(study, value=None, fidelity=64, cost_seconds=100.0, state=TrialState.FAIL)
    # No cost attribute: the duration counts.
    _add_trial(study, value=0.3, fidelity=128, cost_seconds=None, duration_seconds=7.25)
    _add_trial(study, value=None, fidelity=32, cost_seconds=3.0, state=TrialState.PRUNED)
    _add_trial(study, value=0.9, fidelity=256, cost_seconds=0.0)
    _add_trial(study, value=0.1, fidelity=32, cost_seconds=4.5)

    figure = plot_cost_history(study)
    markers, best_line = figure.data
    cumulative, values, best = _expected_history(study)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]

    assert list(markers.x) == pytest.approx(cumulative, abs=1e-12)
    assert list(markers.y) == values
    assert list(best_line.x) == pytest.approx(cumulative, abs=1e-12)
    assert list(best_line.y) == best
    assert best_line.mode == "lines"
    # The fidelity distribution is log, so the colour is log10 of the fidelity.
    expected_color = [math.log10(t.params["super_batch_size"]) for t in completed]
    assert list(markers.marker.color) == pytest.approx(expected_color, abs=1e-12)
    assert [row[0] for row in markers.customdata] == [t.number for t in completed]
    assert figure.layout.xaxis.title.text == "Cumulative cost (seconds)"


def test_plot_cost_history_linear_fidelity_and_trials_without_fidelity() -> None:
    linear = IntDistribution(16, 1024)
    study = optuna.create_study()
    _add_trial(study, value=1.0, fidelity=16, cost_seconds=1.0, fidelity_distribution=linear)
    _add_trial(study, value=2.0, fidelity=None, cost_seconds=2.0)
    _add_trial(study, value=0.5, fidelity=512, cost_seconds=4.0, fidelity_distribution=linear)

    figure = plot_cost_history(study, target_name="Validation error")
    with_fidelity, without_fidelity, best_line = figure.data
    assert list(with_fidelity.marker.color) == [16.0, 512.0]
    assert list(with_fidelity.x) == [1.0, 7.0]
    assert list(without_fidelity.x) == [3.0]
    assert list(without_fidelity.y) == [2.0]
    assert list(best_line.y) == [1.0, 1.0, 0.5]
    assert figure.layout.yaxis.title.text == "Validation error"


def test_plot_cost_history_from_optimize() -> None:
    """A study run by ``optimize``, whose costs are durations for some trials."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        fidelity = trial.suggest_int("super_batch_size", 8, 64, log=True)
        if trial.number % 2 == 0:
            trial.set_user_attr("isbo:cost", 0.1 * fidelity)
        return x**2

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=8)
    figure = plot_cost_history(study)
    cumulative, values, best = _expected_history(study)
    assert list(figure.data[0].x) == pytest.approx(cumulative, rel=1e-12)
    assert list(figure.data[0].y) == values
    assert list(figure.data[-1].y) == best
    assert np.all(np.diff(figure.data[0].x) >= 0.0)


def test_plot_cost_history_without_complete_trials(caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study()
    _add_trial(study, value=None, fidelity=16, cost_seconds=1.0, state=TrialState.FAIL)
    optuna.logging.enable_propagation()
    try:
        figure = plot_cost_history(study)
    finally:
        optuna.logging.disable_propagation()
    assert len(figure.data) == 0
    assert "no complete trials" in caplog.text


def test_plot_cost_history_rejects_multi_objective() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    with pytest.raises(ValueError, match="multi-objective"):
        plot_cost_history(study)


@pytest.mark.parametrize("bad_cost", [-1.0, float("nan"), "fast", True])
def test_bad_cost_attr_warns_and_uses_the_duration(bad_cost: object) -> None:
    """The sampler's rule: a bad attribute is ignored with a warning, the duration counts."""
    study = optuna.create_study()
    _add_trial(study, value=1.0, fidelity=16, cost_seconds=7.0, duration_seconds=7.0)
    trial = study.trials[0]
    trial.user_attrs["isbo:cost"] = bad_cost
    study = optuna.create_study()
    study.add_trial(trial)
    with pytest.warns(RuntimeWarning, match="isbo:cost"):
        figure = plot_cost_history(study)
    assert list(figure.data[0].x) == [7.0]


def test_plot_cost_history_custom_attribute_names() -> None:
    study = optuna.create_study()
    study.add_trial(
        create_trial(
            value=1.0,
            params={"epochs": 3},
            distributions={"epochs": IntDistribution(1, 9)},
            user_attrs={"seconds": 5.0, "isbo:cost": 99.0},
        )
    )
    figure = plot_cost_history(study, cost_attr="seconds", fidelity_param="epochs")
    assert list(figure.data[0].x) == [5.0]
    assert list(figure.data[0].marker.color) == [3.0]


def test_plot_cost_history_without_plotly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    study = optuna.create_study()
    with pytest.raises(ImportError, match="plotly"):
        plot_cost_history(study)


def test_plot_cost_history_without_fidelity_param() -> None:
    """``fidelity_param=None``, as for ``ISBOSampler(fidelity_param=None)``: no fidelity split."""
    study = optuna.create_study()
    _add_trial(study, value=1.0, fidelity=None, cost_seconds=1.0)
    _add_trial(study, value=0.5, fidelity=64, cost_seconds=2.0)
    _add_trial(study, value=0.8, fidelity=None, cost_seconds=4.0)

    figure = plot_cost_history(study, fidelity_param=None)
    markers, best_line = figure.data
    assert list(markers.x) == [1.0, 3.0, 7.0]
    assert list(markers.y) == [1.0, 0.5, 0.8]
    assert markers.mode == "markers" and markers.marker.colorbar.title.text is None
    assert [row[0] for row in markers.customdata] == [0, 1, 2]
    assert "None" not in markers.hovertemplate and "None" not in markers.name
    assert list(best_line.y) == [1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("fidelities", "expected_ticks"),
    [
        ([32, 64, 128, 256, 512, 45], ["32", "45", "64", "128", "256", "512"]),
        ([16, 1024, 16, 1024], ["16", "1024"]),
        (
            [16, 20, 32, 50, 64, 100, 128, 200, 256, 400, 512, 1024],
            ["16", "32", "100", "200", "400", "1024"],
        ),
        ([100], ["100"]),
    ],
    ids=["few", "extremes", "many", "one"],
)
def test_log_fidelity_colorbar_ticks_are_fidelity_values(
    fidelities: list[int], expected_ticks: list[str]
) -> None:
    study = optuna.create_study()
    for i, fidelity in enumerate(fidelities):
        _add_trial(study, value=float(i), fidelity=fidelity, cost_seconds=1.0)
    colorbar = plot_cost_history(study).data[0].marker.colorbar
    assert list(colorbar.ticktext) == expected_ticks
    # Each tick sits at the colour of that fidelity (log10), and the ticks are values that occur.
    assert list(colorbar.tickvals) == pytest.approx([math.log10(int(t)) for t in expected_ticks])
    assert set(map(int, colorbar.ticktext)) <= set(fidelities)


def test_plot_cost_history_saves_as_html_without_extra_packages(tmp_path: Path) -> None:
    """The way to save that the docstring and README give: no kaleido or browser needed."""
    study = optuna.create_study()
    _add_trial(study, value=1.0, fidelity=32, cost_seconds=1.0)
    path = tmp_path / "cost_history.html"
    plot_cost_history(study).write_html(path)
    assert "Cost History Plot" in path.read_text(encoding="utf-8")
