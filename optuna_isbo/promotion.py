r"""Promotion of cheap runs into the target search's startup design.

The target search (:mod:`optuna_isbo.target_search`) starts, as ``GPSampler`` does, from a
space-filling design at the target fidelity. In a multi-fidelity study that design need not
be blind: the cheap runs already rank many configurations. Successive halving (Jamieson and
Talwalkar, 2016; Hyperband, Li et al., 2018) promotes the best ``1/eta`` of each rung of
fidelity to the next one; it uses the *ranks* of cheap values, which survive a cheap fidelity
whose values are biased or scaled (an early epoch's validation error is higher, not
necessarily differently ordered), where the multi-fidelity GP's extrapolation in value may
fail its checks.

The promotion here is a hedge, never a bet. It starts only once the multi-fidelity search's
verifications have failed (the sampler's rule "observed"; before, the verifications are its
promotions, and the target search's start stays space-filling, as GPSampler's). Then the
target search's startup slots alternate between the next point of its space-filling design
and a promotion, so at least half of the design stays space-filling (a cheap fidelity that
misleads cannot hold the search in a poor basin), and promotions stop once their target
values have been worse than those of the space-filling points (:func:`promotions_pay`).

The promoted configuration (:func:`promotion_candidate`) is, among the configurations with
no target evaluation, the one whose rank is best in its highest rung: with ``r`` the
0-based rank of its (mean) value among the ``n`` configurations evaluated at that rung,

.. math::

    p = \frac{r + 1}{n + 1},

a rank percentile that does not call the only configuration of a rung its best (``p = 1/2``)
and trusts the top of a crowded rung more than the top of a sparse one. Ties go to the lower
value (a higher rung's values are, for a fidelity where larger is better, the lower ones),
then to the higher rung. Ranks rather than the multi-fidelity GP's posterior mean: the
promotions are meant to hold where the GP's extrapolation failed its checks. On LCBench
(``benchmarks/RESULTS.md``) ranking by the GP's mean at the target instead gave a lower median
on 5 of 8 tasks but a higher 90th percentile on 6, and a seed worse than random search's
median on 5 tasks against 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

from optuna_isbo import constraints
from optuna_isbo import recommendation as rec
from optuna_isbo import trials as study_trials
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ATTR_PREFIX

#: Trials of each kind behind a verdict of :func:`promotions_pay`.
MIN_EVIDENCE = 2


def promotion_candidate(
    X: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    *,
    usable: torch.Tensor | None = None,
    pending: torch.Tensor | None = None,
) -> int | None:
    """Index, into ``X``, of an evaluation whose configuration to promote to the target.

    Parameters
    ----------
    X
        ``(n, d)`` encoded configurations of the completed evaluations.
    s
        ``(n,)`` their unit fidelities (1 at the target).
    y
        ``(n,)`` their values, minimized (outliers already tamed).
    usable
        ``(n,)`` bool, the evaluations that may rank a configuration (e.g. those observed
        feasible in a constrained study); all of them when ``None``. A configuration with
        any other evaluation is not promoted.
    pending
        ``(m, d)`` configurations not to promote: running (or decided) at the target, or
        failed (an error, a pruned or non-finite run) at any fidelity.

    Returns
    -------
    int or None
        The index of the candidate's evaluation at its highest rung, or ``None`` when every
        configuration evaluated below the target has a target evaluation (or is pending).
    """
    n = X.shape[0]
    if n == 0:
        return None
    usable = torch.ones(n, dtype=torch.bool) if usable is None else usable.to(torch.bool)
    configs = rec.group_configurations(X, s)
    at_target = rec.is_target(s)
    blocked = configs.n_target > 0
    # A configuration with an evaluation that may not rank it (observed infeasible) is not
    # promoted at all: a constraint that grows with the fidelity (memory) fails dearer still.
    k = configs.X.shape[0]
    unusable = torch.zeros(k, dtype=torch.long).scatter_add(
        0, configs.index, (~usable).to(torch.long)
    )
    blocked = blocked | (unusable > 0)
    if pending is not None and pending.shape[0] > 0 and X.shape[1] > 0:
        close = (configs.X[:, None, :] - pending[None, :, :]).abs() <= 1e-9
        blocked = blocked | close.all(dim=-1).any(dim=-1)
    # Each configuration's highest rung below the target, and its mean value there.
    cheap = ~at_target & usable & torch.isfinite(y)
    top = torch.full((k,), -math.inf, dtype=s.dtype).scatter_reduce(
        0, configs.index[cheap], s[cheap], reduce="amax"
    )
    best: tuple[float, float, float, int] | None = None
    for rung in torch.unique(s[cheap]).tolist():
        members = cheap & (s == rung)
        index = configs.index[members]
        total = torch.zeros(k, dtype=y.dtype).scatter_add(0, index, y[members])
        count = torch.zeros(k, dtype=y.dtype).scatter_add(0, index, torch.ones_like(y[members]))
        present = count > 0
        mean = torch.where(present, total / count.clamp_min(1.0), math.inf)
        rank = torch.empty(k, dtype=torch.long)
        rank[torch.argsort(mean, stable=True)] = torch.arange(k)
        n_rung = int(present.sum())
        for c in torch.nonzero(present & ~blocked & (top == rung)).flatten().tolist():
            p = (int(rank[c]) + 1) / (n_rung + 1)
            key = (p, float(mean[c]), -rung, c)
            if best is None or key < best:
                best = key
    if best is None:
        return None
    c, rung = best[3], -best[2]
    rows = torch.nonzero((configs.index == c) & cheap & (s == rung)).flatten()
    return int(rows[0])


def promotions_pay(promoted: Sequence[float], designed: Sequence[float]) -> bool:
    """Whether promotions go on: ``False`` once they have done worse than the design.

    Parameters
    ----------
    promoted, designed
        Target values (minimized) of the target search's promoted trials and of its
        space-filling ones.

    Returns
    -------
    bool
        ``True`` until each kind has :data:`MIN_EVIDENCE` trials; then whether the promoted
        trials' median is at most the space-filling ones' (the lower median of each).
    """
    if len(promoted) < MIN_EVIDENCE or len(designed) < MIN_EVIDENCE:
        return True
    return _lower_median(promoted) <= _lower_median(designed)


def promotion_due(n_promoted: int, n_designed: int) -> bool:
    """Whether the next startup slot is a promotion: they alternate, a promotion first."""
    return n_promoted <= n_designed


def _lower_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


#: ``isbo:promoted`` marks the target search's promotions (``False``: its design points).
PROMOTED_ATTR = ATTR_PREFIX + "promoted"


def promotion(
    study: Study,
    space: SearchSpace,
    completed: list[FrozenTrial],
    trials: Sequence[FrozenTrial],
    phase: str,
    pending_params: Sequence[dict[str, Any]] = (),
    failed: Sequence[FrozenTrial] = (),
) -> dict[str, Any] | None:
    """The parameters of the target search's next startup slot when it is a promotion.

    ``None`` when the slot is a design point: a design point is due
    (:func:`promotion_due`, counting the running trials of ``phase`` too), promotions no
    longer pay (:func:`promotions_pay`), or nothing is left to promote
    (:func:`promotion_candidate`). In a constrained study only evaluations observed feasible
    rank a configuration.

    Parameters
    ----------
    study
        The study (its direction).
    space
        The search space, with a fidelity.
    completed
        The completed trials the model sees.
    trials
        Every listed trial, running ones included.
    phase
        ``isbo:phase`` of the target search's trials.
    pending_params
        Parameters of the other running trials; those at the target are not promoted again.
    failed
        Trials whose configuration failed (:func:`optuna_isbo.trials.failed_configurations`):
        not promoted. A promotion that failed counts as the worst outcome in
        :func:`promotions_pay`, and as a promotion in the alternation.
    """
    own = [
        t
        for t in trials
        if t.user_attrs.get(ATTR_PREFIX + "phase") == phase and PROMOTED_ATTR in t.user_attrs
    ]
    n_promoted = sum(bool(t.user_attrs[PROMOTED_ATTR]) for t in own)
    if not promotion_due(n_promoted, len(own) - n_promoted):
        return None
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    tamed = study_trials.tamed_values(completed, study)
    values = {t.number: sign * tamed.get(t.number, float(t.values[0])) for t in completed}
    # A finished trial that taught nothing (failed, pruned, non-finite) counts as the worst.
    finished = [t for t in own if t.state.is_finished()]
    outcome = {t.number: values.get(t.number, math.inf) for t in finished}
    if not promotions_pay(
        [outcome[t.number] for t in finished if t.user_attrs[PROMOTED_ATTR]],
        [outcome[t.number] for t in finished if not t.user_attrs[PROMOTED_ATTR]],
    ):
        return None
    X, s = space.encode_trials(completed)
    y = torch.tensor([values[t.number] for t in completed], dtype=torch.float64)
    usable = None
    keys = constraints.constraint_keys(completed)
    if keys:
        C = constraints.constraint_values(completed, keys)
        usable = (C <= 0.0).all(dim=1)
    pending = None
    encoded = [
        space.encode_params(p)
        for p in pending_params
        if set(space.names) <= p.keys() and space.fidelity_param in p
    ]
    blocked = [x for x, s_run in encoded if s_run >= rec.TARGET_S]
    blocked += [space.encode_params(study_trials.mark_params(t, space)[-1])[0] for t in failed]
    if blocked:
        pending = torch.stack(blocked)
    i = promotion_candidate(X, s, y, usable=usable, pending=pending)
    return None if i is None else space.decode(X[i], 1.0)
