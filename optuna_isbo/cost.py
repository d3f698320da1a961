"""The cost of a trial in seconds: the one rule that the sampler and the plots share.

A trial costs everything between its creation and its completion: the sampler's own ``ask``
(Optuna sets ``datetime_start`` when the trial is created), building the model, training and
validation. The user attribute written by :meth:`ISSGD.report <optuna_isbo.ISSGD.report>`
(``"isbo:cost"``) measures the training loop alone, a lower bound of that. So

.. math::

    c = \\max(c_\\mathrm{attr}, \\; t_\\mathrm{complete} - t_\\mathrm{start}, \\; c_\\min),

over whichever of the two is available, with ``c_min = 1 ms``. A simulated cost (a benchmark
that writes ``"isbo:cost"`` larger than the real duration) is used as it is. An attribute that
is not a finite non-negative number is ignored with a warning, and the duration is used.
Modelling only the training seconds would make a cheap fidelity look far cheaper than it is,
because the per-trial overhead does not shrink with the fidelity.
"""

from __future__ import annotations

import math
import warnings

from optuna.trial import FrozenTrial

MIN_COST_SECONDS = 1e-3
DEFAULT_COST_ATTR = "isbo:cost"


def _attr_seconds(trial: FrozenTrial, cost_attr: str) -> float | None:
    if cost_attr not in trial.user_attrs:
        return None
    raw = trial.user_attrs[cost_attr]
    if not isinstance(raw, bool) and isinstance(raw, int | float):
        value = float(raw)
        if math.isfinite(value) and value >= 0.0:
            return value
    warnings.warn(
        f"Trial {trial.number} has user attribute {cost_attr!r} = {raw!r}, not a finite "
        "non-negative number of seconds; its duration is used as its cost instead.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def _duration_seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return seconds if math.isfinite(seconds) and seconds >= 0.0 else None


def trial_cost_seconds(trial: FrozenTrial, cost_attr: str = DEFAULT_COST_ATTR) -> float:
    """The cost of a finished trial in seconds (see the module docstring for the rule).

    Parameters
    ----------
    trial
        A finished trial.
    cost_attr
        Name of the user attribute holding the measured or simulated cost in seconds.

    Returns
    -------
    float
        A finite cost of at least ``MIN_COST_SECONDS``.
    """
    known = [
        c for c in (_attr_seconds(trial, cost_attr), _duration_seconds(trial)) if c is not None
    ]
    return max([MIN_COST_SECONDS, *known])
