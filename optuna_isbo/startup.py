r"""The fidelities of the startup design, chosen by what a cheaper run saves.

Before the model is used, the startup trials spread ``x`` by a scrambled Sobol sequence and the
fidelity as ``s = u^2`` (``u`` uniform) rounded to the fidelity grid, so that most of them are
cheap and the model still sees how fidelities relate. That is right when cheap runs are much
cheaper, and wrong when they are not: under a fixed cost per trial plus a small fidelity term
(the cost model of BoTorch's multi-fidelity tutorials, ``5 + s``) most of the startup cost
would buy biased evaluations at almost the price of target ones.

So a startup trial keeps its design fidelity ``s < 1`` only if

.. math::

    \frac{c(s)}{c(1)} < \rho_0(s)^2 = \frac{1}{1 + \beta_0 (1 - s)^{2 p_0}},

and otherwise runs at the target. ``rho_0`` is the correlation of ``f(x, s)`` with ``f(x, 1)``
under the prior medians of the fidelity kernel
(:func:`optuna_isbo.model.prior_target_correlation`): a noiseless observation at ``s`` removes
the share ``rho_0^2`` of what one at the target removes from the variance of ``f(x, 1)``, so
below that cost ratio it is the better buy per second. At the cheapest fidelity
``rho_0^2 = 1/2``.

The cost ratio comes from the completed trials: with ``s_lo < s_hi`` the lowest and highest
fidelities among them and ``c_lo, c_hi`` the median costs there, log cost is taken as linear in
``s``, ``c(s) / c(1) = (c_lo / c_hi)^{(1 - s) / (s_hi - s_lo)}``. While fewer than two
fidelities have completed trials (the first trials, or parallel workers that started
together), the design fidelity is used. Where cheap runs pay, the design is therefore unchanged;
no trial is spent only to measure a cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

from optuna_isbo.model import prior_target_correlation


def design_fidelity(grid: torch.Tensor, u: float) -> float:
    """The design's fidelity for a uniform draw ``u``: the grid level nearest to ``u^2``.

    Parameters
    ----------
    grid
        ``(k,)`` increasing unit fidelities ending at 1.
    u
        A number in ``[0, 1]``.
    """
    return float(grid[torch.argmin((grid - u**2).abs())])


def cost_ratio_pays(s: float, log_cost_slope: float) -> bool:
    """Whether a run at ``s < 1`` is worth its cost, by the rule in the module docstring.

    Parameters
    ----------
    s
        The unit fidelity considered.
    log_cost_slope
        ``d log c / d s``, so that ``c(s) / c(1) = exp(-slope (1 - s))``.
    """
    ratio = math.exp(-log_cost_slope * (1.0 - s))
    rho = float(prior_target_correlation(torch.tensor([s], dtype=torch.float64))[0])
    return ratio < rho**2


def startup_fidelity(
    grid: torch.Tensor, u: float, observed: Sequence[tuple[float, float]]
) -> float:
    """The unit fidelity of a startup trial.

    Parameters
    ----------
    grid
        ``(k,)`` increasing unit fidelities ending at 1 (the sampler's fidelity grid).
    u
        The design's uniform draw for this trial.
    observed
        ``(s, cost_seconds)`` of the completed trials.

    Returns
    -------
    float
        A level of ``grid``.
    """
    s = design_fidelity(grid, u)
    levels = sorted({level for level, _ in observed})
    if s >= 1.0 or len(levels) < 2:
        return s
    s_lo, s_hi = levels[0], levels[-1]
    c_lo = statistics.median(c for level, c in observed if level == s_lo)
    c_hi = statistics.median(c for level, c in observed if level == s_hi)
    slope = (math.log(max(c_hi, 1e-12)) - math.log(max(c_lo, 1e-12))) / (s_hi - s_lo)
    return s if cost_ratio_pays(s, slope) else 1.0
