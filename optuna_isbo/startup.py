r"""The fidelities of the startup design, chosen by what a cheaper run saves.

Before the model is used, the startup trials spread ``x`` by a scrambled Sobol sequence and the
fidelity as ``s = u^2`` (``u`` uniform) rounded to the fidelity grid, so that most of them are
cheap and the model still sees how fidelities relate. That is right when cheap runs are much
cheaper, and wrong when they are not: under a fixed cost per trial plus a small fidelity term
(the cost model of BoTorch's multi-fidelity tutorials, ``5 + s``) most of the startup cost
would buy biased evaluations at almost the price of target ones.

So the first trial runs at the cheapest fidelity and the second at the target, which measures
what each costs, and every later startup trial keeps its design fidelity ``s < 1`` only if

.. math::

    \frac{c(s)}{c(1)} < \rho_0(s)^2 = \frac{1}{1 + \beta_0 (1 - s)^{2 p_0}},

else it runs at the target. ``rho_0`` is the correlation of ``f(x, s)`` with ``f(x, 1)`` under
the prior medians of the fidelity kernel (:func:`optuna_isbo.model.prior_target_correlation`):
a noiseless observation at ``s`` removes the share ``rho_0^2`` of what one at the target
removes from the variance of ``f(x, 1)``, so below that cost ratio it is the better buy per
second. The cost ratio at ``s`` is interpolated log-linearly in ``s`` between the medians of
the observed costs at the cheapest level and at the target,
``c(s) / c(1) = (c(s_0) / c(1))^{(1 - s) / (1 - s_0)}``. While either level has no completed
trial (the first trials, or parallel workers), the design fidelity is used.
"""

from __future__ import annotations

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


def cost_ratio_pays(s: float, s_cheapest: float, cheapest_to_target: float) -> bool:
    """Whether a run at ``s < 1`` is worth its cost, by the rule in the module docstring.

    Parameters
    ----------
    s
        The unit fidelity considered, ``s_cheapest <= s < 1``.
    s_cheapest
        The cheapest level, ``s_0 < 1``.
    cheapest_to_target
        Observed ``c(s_0) / c(1)``.
    """
    ratio = max(cheapest_to_target, 0.0) ** ((1.0 - s) / (1.0 - s_cheapest))
    rho = float(prior_target_correlation(torch.tensor([s], dtype=torch.float64))[0])
    return ratio < rho**2


def startup_fidelity(
    grid: torch.Tensor,
    trial_number: int,
    u: float,
    observed: Sequence[tuple[float, float]],
) -> float:
    """The unit fidelity of startup trial ``trial_number``.

    Parameters
    ----------
    grid
        ``(k,)`` increasing unit fidelities ending at 1 (the sampler's fidelity grid).
    trial_number
        The trial's number (the design's index).
    u
        The design's uniform draw for this trial.
    observed
        ``(s, cost_seconds)`` of the completed trials.

    Returns
    -------
    float
        A level of ``grid``.
    """
    if grid.shape[0] == 1:
        return 1.0
    s_cheapest = float(grid[0])
    if trial_number == 0:
        return s_cheapest
    if trial_number == 1:
        return 1.0
    s = design_fidelity(grid, u)
    if s >= 1.0:
        return 1.0
    cheapest = [c for level, c in observed if abs(level - s_cheapest) < 1e-9]
    target = [c for level, c in observed if level >= 1.0 - 1e-9]
    if not cheapest or not target:
        return s
    ratio = statistics.median(cheapest) / statistics.median(target)
    return s if cost_ratio_pays(s, s_cheapest, ratio) else 1.0
