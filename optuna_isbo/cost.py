"""The cost of a trial in seconds: the one rule that the sampler and the plots share.

A trial costs everything between its creation and its completion: the sampler's own ``ask``
(Optuna sets ``datetime_start`` when the trial is created), building the model, training and
validation. The user attribute written by :meth:`ISSGD.report <optuna_isbo.ISSGD.report>`
(``"isbo:cost"``) measures the training loop alone, a lower bound of that. So

.. math::

    c = \\max(c_\\mathrm{attr}, \\; t_\\mathrm{complete} - t_\\mathrm{start}, \\; c_\\min),

over whichever of the two is available, with ``c_min = 1 ms``. A simulated cost (a benchmark
that writes ``"isbo:cost"`` larger than the real duration) is used as it is. The attribute may
be a real number of any numeric type: a Python ``int`` or ``float``, a
:class:`fractions.Fraction` or :class:`decimal.Decimal`, a NumPy scalar, or a 0-d NumPy array
or torch tensor of an integer or floating dtype. An attribute that is not such a number (a
bool, a string, a list, ``None``), or whose value is negative, NaN, infinite or beyond the
float64 range (``10**400``), is ignored with a warning, and the duration is used.
Modelling only the training seconds would make a cheap fidelity look far cheaper than it is,
because the per-trial overhead does not shrink with the fidelity.
"""

from __future__ import annotations

import decimal
import math
import numbers
import warnings

import numpy as np
import torch
from optuna.trial import FrozenTrial

MIN_COST_SECONDS = 1e-3
DEFAULT_COST_ATTR = "isbo:cost"


def _as_real(raw: object) -> float | None:
    """``raw`` as a float if it is a real number of a numeric type (not a bool), else None.

    The float may be infinite or NaN; a number beyond the float64 range gives None.
    """
    try:
        value: object = raw
        if isinstance(raw, np.ndarray):
            if raw.ndim != 0 or raw.dtype.kind not in "iuf":
                return None
            value = raw.item()
        elif isinstance(raw, torch.Tensor):
            if raw.ndim != 0 or raw.dtype == torch.bool or raw.dtype.is_complex:
                return None
            value = raw.item()
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, numbers.Real | decimal.Decimal
        ):
            return None
        return float(value)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        # beyond the float64 range (10**400), a signalling NaN, a tensor without data (meta)
        return None


def _short_repr(raw: object, limit: int = 60) -> str:
    text = repr(raw)
    return text if len(text) <= limit else f"{text[: limit - 15]}...{text[-12:]}"


def _attr_seconds(trial: FrozenTrial, cost_attr: str) -> float | None:
    if cost_attr not in trial.user_attrs:
        return None
    raw = trial.user_attrs[cost_attr]
    value = _as_real(raw)
    if value is not None and math.isfinite(value) and value >= 0.0:
        return value
    warnings.warn(
        f"Trial {trial.number} has user attribute {cost_attr!r} = {_short_repr(raw)} "
        f"({type(raw).__name__}), not a finite non-negative number of seconds within the "
        "float64 range; its duration is used as its cost instead.",
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
