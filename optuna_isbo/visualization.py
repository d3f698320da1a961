"""Plots for cost-aware multi-fidelity studies, in the style of :mod:`optuna.visualization`.

A multi-fidelity optimizer spends its budget unevenly: a trial at a low fidelity costs a
fraction of one at the target fidelity. Plotting against the trial number, as
:func:`optuna.visualization.plot_optimization_history` does, hides that trade-off; this module
plots against the wall-clock actually spent instead.

For completed trials :math:`t_1, \\dots, t_n` in trial-number order with costs
:math:`c_i` (seconds) and objective values :math:`y_i`, the x coordinate of trial
:math:`t_k` is the cumulative cost :math:`C_k = \\sum_{i \\le k} c_i`, and the best-so-far
line is :math:`\\min_{i \\le k} y_i` (:math:`\\max` when the study maximizes) over the finite
values of feasible trials (the sampler ignores non-finite values, and an infeasible trial is
no solution). A trial is feasible, as in
:func:`optuna.visualization.plot_optimization_history`, when every value of its constraints
(``trial.constraints``: ``trial.set_constraint`` or a ``constraints_func``) is ``<= 0`` (a NaN
is not); a trial without constraints is feasible. With ``include_pruned_and_failed=True`` the
sums run over pruned and failed trials too, whose cost was spent but which have no value. The
cost of a trial is :func:`optuna_isbo.cost.trial_cost_seconds`, the cost the sampler models:
the larger of the user attribute ``"isbo:cost"`` (written by ``ISSGD.report``) and the trial's
duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.logging import get_logger
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo.cost import trial_cost_seconds

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["plot_cost_history"]

# A child of Optuna's logger, so that ``optuna.logging.set_verbosity`` applies to it.
_logger = get_logger("optuna." + __name__)


class _CostHistoryInfo(NamedTuple):
    """What the plot draws: one entry per completed trial, and the best-value line."""

    trial_numbers: list[int]
    cumulative_cost_seconds: list[float]
    values: list[float]
    feasible: list[bool]
    fidelities: list[float | None]
    log_fidelity: bool
    # The line has a point per trial whose cost counts: the completed ones, and the pruned and
    # failed ones with ``include_pruned_and_failed``.
    line_cost_seconds: list[float]
    best_values: list[float]


def _import_plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as e:
        raise ImportError(
            "plot_cost_history requires plotly. Install it with `pip install plotly`."
        ) from e
    return go


def _is_log_distribution(distribution: BaseDistribution) -> bool:
    return isinstance(distribution, FloatDistribution | IntDistribution) and distribution.log


def _fidelity_value(trial: FrozenTrial, fidelity_param: str) -> float | None:
    if fidelity_param not in trial.params:
        return None
    raw = trial.params[fidelity_param]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(
            f"Trial {trial.number} has fidelity_param {fidelity_param!r} = {raw!r}; "
            "the fidelity must be numeric."
        )
    return float(raw)


def _is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule (``plot_optimization_history``): every constraint value ``<= 0``."""
    return all(c <= 0.0 for c in trial.constraints.values())


def _get_cost_history_info(
    study: Study, cost_attr: str, fidelity_param: str | None, include_pruned_and_failed: bool
) -> _CostHistoryInfo | None:
    if study._is_multi_objective():
        raise ValueError(
            "plot_cost_history does not support multi-objective studies; "
            f"`study` {study.study_name!r} has {len(study.directions)} objectives."
        )
    states: tuple[TrialState, ...] = (TrialState.COMPLETE,)
    if include_pruned_and_failed:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    counted = sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)
    is_complete = np.array([t.state == TrialState.COMPLETE for t in counted], dtype=bool)
    trials = [t for t in counted if t.state == TrialState.COMPLETE]
    if len(trials) == 0:
        _logger.warning("There are no complete trials.")
        return None

    cumulative = np.cumsum([trial_cost_seconds(t, cost_attr) for t in counted])
    values = np.array([float(t.values[0]) for t in trials])
    finite = np.isfinite(values)
    if not finite.all():
        # The sampler ignores these values too: an infinite value is no best value.
        _logger.warning(
            "Trials %s have non-finite values; the best-value line ignores them.",
            [t.number for t, ok in zip(trials, finite, strict=True) if not ok],
        )
    feasible = np.array([_is_feasible(t) for t in trials], dtype=bool)
    if not feasible.any():
        _logger.warning("There are no feasible trials; the best-value line is empty.")
    worst = np.inf if study.direction == StudyDirection.MINIMIZE else -np.inf
    # Per counted trial: its value where it may be the best, else the worst possible.
    candidates = np.full(len(counted), worst)
    candidates[is_complete] = np.where(finite & feasible, values, worst)
    if study.direction == StudyDirection.MINIMIZE:
        best_values = np.minimum.accumulate(candidates)
    else:
        best_values = np.maximum.accumulate(candidates)
    # No line before the first finite feasible value.
    best_values = np.where(np.isfinite(best_values), best_values, np.nan)

    if fidelity_param is None:
        fidelities: list[float | None] = [None] * len(trials)
        distributions = []
    else:
        fidelities = [_fidelity_value(t, fidelity_param) for t in trials]
        distributions = [
            t.distributions[fidelity_param] for t in trials if fidelity_param in t.distributions
        ]
    log_fidelity = len(distributions) > 0 and all(_is_log_distribution(d) for d in distributions)
    if log_fidelity and any(f is not None and f <= 0.0 for f in fidelities):
        log_fidelity = False
    return _CostHistoryInfo(
        trial_numbers=[t.number for t in trials],
        cumulative_cost_seconds=cumulative[is_complete].tolist(),
        values=values.tolist(),
        feasible=feasible.tolist(),
        fidelities=fidelities,
        log_fidelity=log_fidelity,
        line_cost_seconds=cumulative.tolist(),
        best_values=best_values.tolist(),
    )


def _format_fidelity(value: float) -> str:
    """``value`` as written: ``512`` for an integral value, never an exponent below 1e15."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _log_ticks(fidelities: Sequence[float], max_ticks: int = 6) -> list[float]:
    """Fidelity values that occur, spread evenly on a log scale, at most ``max_ticks`` of them.

    Every distinct value when there are few; otherwise the one nearest (in log) to each of
    ``max_ticks`` log-spaced points between the smallest and the largest, which are kept.
    """
    distinct = np.unique(np.asarray(fidelities, dtype=float))
    if len(distinct) <= max_ticks:
        return distinct.tolist()
    logs = np.log(distinct)
    targets = np.linspace(logs[0], logs[-1], max_ticks)
    nearest = np.abs(logs[None, :] - targets[:, None]).argmin(axis=1)
    return distinct[np.unique(nearest)].tolist()


def _colorbar(fidelities: Sequence[float], log_fidelity: bool, title: str) -> dict[str, Any]:
    colorbar: dict[str, Any] = {"title": {"text": title}}
    if log_fidelity:
        # The colour is log10 of the fidelity: label its ticks with fidelities that occur.
        tick_fidelities = _log_ticks(fidelities)
        colorbar["tickvals"] = np.log10(tick_fidelities).tolist()
        colorbar["ticktext"] = [_format_fidelity(f) for f in tick_fidelities]
    return colorbar


def _get_cost_history_plot(
    info: _CostHistoryInfo | None, target_name: str, fidelity_param: str | None
) -> go.Figure:
    go = _import_plotly()
    layout = go.Layout(
        title="Cost History Plot",
        xaxis={"title": "Cumulative cost (seconds)"},
        yaxis={"title": target_name},
    )
    if info is None:
        return go.Figure(data=[], layout=layout)

    feasible = [i for i, ok in enumerate(info.feasible) if ok]
    infeasible = [i for i, ok in enumerate(info.feasible) if not ok]
    traces = []
    if fidelity_param is None:
        traces.append(
            go.Scatter(
                x=[info.cumulative_cost_seconds[i] for i in feasible],
                y=[info.values[i] for i in feasible],
                mode="markers",
                name=target_name,
                customdata=[[info.trial_numbers[i]] for i in feasible],
                hovertemplate="Trial %{customdata[0]}<extra></extra>",
            )
        )
        if infeasible:
            traces.append(
                _infeasible_trace(go, info, infeasible, "Trial %{customdata[0]} (infeasible)")
            )
        traces.append(_best_value_trace(go, info))
        return go.Figure(data=traces, layout=layout)

    with_fidelity = [i for i in feasible if info.fidelities[i] is not None]
    without_fidelity = [i for i in feasible if info.fidelities[i] is None]
    hover = "Trial %{customdata[0]}<br>" + fidelity_param + ": %{customdata[1]}<extra></extra>"

    if with_fidelity:
        fidelity_values = [f for i in with_fidelity if (f := info.fidelities[i]) is not None]
        color = np.log10(fidelity_values) if info.log_fidelity else np.asarray(fidelity_values)
        traces.append(
            go.Scatter(
                x=[info.cumulative_cost_seconds[i] for i in with_fidelity],
                y=[info.values[i] for i in with_fidelity],
                mode="markers",
                name=target_name,
                customdata=[
                    [info.trial_numbers[i], f]
                    for i, f in zip(with_fidelity, fidelity_values, strict=True)
                ],
                hovertemplate=hover,
                marker={
                    "color": color.tolist(),
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": _colorbar(
                        fidelity_values,
                        info.log_fidelity,
                        f"{fidelity_param} (log scale)" if info.log_fidelity else fidelity_param,
                    ),
                },
            )
        )
    if without_fidelity:
        traces.append(
            go.Scatter(
                x=[info.cumulative_cost_seconds[i] for i in without_fidelity],
                y=[info.values[i] for i in without_fidelity],
                mode="markers",
                name=f"{target_name} (no {fidelity_param})",
                customdata=[[info.trial_numbers[i], None] for i in without_fidelity],
                hovertemplate=hover,
                marker={"color": "#cccccc"},
            )
        )
    if infeasible:
        traces.append(
            _infeasible_trace(
                go, info, infeasible, hover.replace("<extra>", "<br>infeasible<extra>")
            )
        )
    traces.append(_best_value_trace(go, info))
    return go.Figure(data=traces, layout=layout)


def _infeasible_trace(
    go: Any, info: _CostHistoryInfo, indices: Sequence[int], hovertemplate: str
) -> Any:
    """Grey crosses, as Optuna greys out infeasible trials: unlike any other marker here."""
    return go.Scatter(
        x=[info.cumulative_cost_seconds[i] for i in indices],
        y=[info.values[i] for i in indices],
        mode="markers",
        name="Infeasible Trial",
        customdata=[[info.trial_numbers[i], info.fidelities[i]] for i in indices],
        hovertemplate=hovertemplate,
        marker={"color": "#999999", "symbol": "x"},
    )


def _best_value_trace(go: Any, info: _CostHistoryInfo) -> Any:
    return go.Scatter(
        x=info.line_cost_seconds,
        y=info.best_values,
        mode="lines",
        line_shape="hv",
        name="Best Value",
    )


def plot_cost_history(
    study: Study,
    *,
    cost_attr: str = "isbo:cost",
    fidelity_param: str | None = "super_batch_size",
    target_name: str = "Objective Value",
    include_pruned_and_failed: bool = False,
) -> go.Figure:
    """Plot objective values and the best value so far against the cumulative cost.

    Completed trials are taken in trial-number order. Running trials are left out; so are
    pruned and failed trials, and their cost, unless ``include_pruned_and_failed`` is set. Each
    completed trial is a marker at (cumulative cost, value), coloured by its fidelity (on a log
    colour scale when the fidelity's distribution is log, its ticks labelled with fidelity
    values that occur); trials without the fidelity parameter are grey. With
    ``fidelity_param=None`` (a study without a fidelity, such as one run by
    ``ISBOSampler(fidelity_param=None)``) the markers are not split by fidelity. In a
    constrained study, infeasible trials (a constraint value above 0 or NaN, Optuna's rule)
    are grey crosses. A step line shows the best value so far among the feasible trials,
    respecting the study direction; like the sampler, it ignores values that are not finite
    (a trial completed at ``inf``), with a logged warning.

    The figure is a plotly figure: ``fig.show()`` opens it in a browser or notebook, and
    ``fig.write_html("cost_history.html")`` saves it as an interactive page with nothing more
    installed. Static images (``fig.write_image("cost_history.png")``) need plotly's
    ``kaleido`` package and a Chrome or Chromium browser, which this package does not install.

    Example
    -------
    .. code::

        import optuna
        from optuna_isbo import ISBOSampler
        from optuna_isbo.visualization import plot_cost_history

        study = optuna.create_study(sampler=ISBOSampler())
        study.optimize(objective, n_trials=30)
        plot_cost_history(study).show()

    Parameters
    ----------
    study
        A single-objective :class:`~optuna.study.Study`.
    cost_attr
        User attribute holding each trial's cost in seconds. Trials without it count their
        duration (``datetime_complete - datetime_start``) instead.
    fidelity_param
        Name of the fidelity parameter that colours the markers, or ``None`` for a plot
        without the fidelity.
    target_name
        Label of the objective on the y axis and in the legend.
    include_pruned_and_failed
        Add the cost of pruned and failed trials (by the same rule: ``cost_attr`` or the
        duration) to the cumulative cost, so that the x axis ends at all the seconds spent.
        They have no value and get no marker; the best-value line has a point at each of them.
        By default their cost is left out, and the axis ends at the seconds of the completed
        trials.

    Returns
    -------
    plotly.graph_objects.Figure
        A :class:`plotly.graph_objects.Figure`. Its first trace holds the markers of feasible
        trials with the fidelity parameter (of all feasible trials when ``fidelity_param`` is
        ``None``), an optional grey trace those without it, an optional trace
        ``"Infeasible Trial"`` the infeasible trials, and the last trace the best-value line.
        A study without completed trials gives a figure without traces and a logged warning.

    Raises
    ------
    ValueError
        If ``study`` is multi-objective, or if a fidelity value is not numeric. A cost
        attribute that is not a finite non-negative number is ignored with a warning, and the
        trial's duration counts (as for the sampler).
    TypeError
        If ``include_pruned_and_failed`` is not a bool.
    ImportError
        If plotly is not installed.
    """
    if not isinstance(include_pruned_and_failed, bool | np.bool_):
        raise TypeError(
            "`include_pruned_and_failed` must be bool, got "
            f"{include_pruned_and_failed!r} ({type(include_pruned_and_failed).__name__})."
        )
    _import_plotly()
    info = _get_cost_history_info(
        study, cost_attr, fidelity_param, bool(include_pruned_and_failed)
    )
    return _get_cost_history_plot(info, target_name, fidelity_param)
