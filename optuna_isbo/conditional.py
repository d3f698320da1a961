r"""Conditional parameters: suggested by some trials only, modelled with an inactive value.

Optuna's search spaces are defined by running the objective, so a parameter may exist in some
trials only: ``momentum`` only where ``optimizer == "sgd"``, the width of a third layer only
where ``n_layers >= 3``. A sampler that models the intersection of the trials' spaces (as
Optuna's ``GPSampler`` does) leaves such a parameter to random sampling, and a search whose
optimum lies in the conditional branch then has to find the parameter's value by chance.

Here a conditional parameter stays in the model. A trial that lacks it is encoded with the
parameter at its *inactive* value (the centre of its numeric range, or the centre ``1/C`` of a
categorical's one-hot block), as imputation with a default value does for the tree-structured
spaces of Lévesque et al., "Bayesian optimization for conditional hyperparameter spaces"
(IJCNN 2017), and of SMAC (Hutter et al., LION 2011). The parameters that decide whether it is
active, which the study does not state, are learnt from the trials: a *parent* is a parameter
that every trial has, and whose values in the trials with the conditional parameter are
separated from those in the trials without it,

- a categorical parent: the choices seen with it and the choices seen without it are disjoint
  (it is active for the former, and for choices never seen);
- a numeric parent: a threshold in its encoded value ``u`` separates the two groups (it is
  active on the side of the trials that have it; the threshold is the midpoint of the gap),
  and the separation is unlikely to be chance: were the ``k`` trials with it a random subset
  of all ``n``, a threshold would separate them with probability ``2 / binom(n, k)``, which
  must be below ``1 %`` (5 trials on each side, or 4 on one side and 6 on the other).

Categorical parents are preferred to numeric ones, and among either the first by name. A
candidate whose parent says "inactive" has the parameter set to its inactive value before the
acquisition sees it (:meth:`optuna_isbo.search_space.SearchSpace.snap`), so that the model
predicts it as the trial it will be, and its proposal omits the parameter
(:meth:`~optuna_isbo.search_space.SearchSpace.decode`). Without a parent, the parameter is
proposed in every trial and used by those that suggest it. The rules are learnt afresh on
every ``ask``, so one that the trials so far satisfy by chance is dropped once a trial
contradicts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial

from optuna_isbo.search_space import SearchSpace

# Largest probability that a numeric parent separates the trials by chance.
_CHANCE_SEPARATION = 0.01


@dataclass(frozen=True)
class Condition:
    """When a conditional parameter is active: a rule on one parent's encoded columns.

    Attributes
    ----------
    parent
        Name of the parent parameter.
    columns
        The parent's columns of ``x``.
    choices
        For a categorical parent, the indices of the choices that make it inactive; ``None``
        for a numeric parent.
    threshold
        For a numeric parent, the encoded value ``u`` that separates the two sides.
    above
        For a numeric parent, whether it is active above the threshold (else below).
    """

    parent: str
    columns: slice
    choices: frozenset[int] | None = None
    threshold: float = math.nan
    above: bool = True

    def active(self, X: torch.Tensor) -> torch.Tensor:
        """Whether the parameter is active at each row of ``X`` (shape ``(n, dim)``; snapped
        in the parent's columns); a bool tensor of shape ``(n,)``."""
        block = X[:, self.columns]
        if self.choices is not None:
            inactive = torch.tensor(sorted(self.choices), dtype=torch.long, device=X.device)
            return ~torch.isin(block.argmax(dim=1), inactive)
        u = block[:, 0]
        return u > self.threshold if self.above else u < self.threshold


def union_search_space(trials: Sequence[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Every parameter of ``trials`` whose distribution is one and the same wherever it occurs.

    The union of the trials' spaces, less the parameters whose distribution changed during the
    study (which no single encoding covers); sorted by name, as Optuna's
    ``intersection_search_space``, which it equals where every trial has every parameter.
    """
    seen: dict[str, BaseDistribution] = {}
    changed: set[str] = set()
    for t in trials:
        for name, distribution in t.distributions.items():
            if seen.setdefault(name, distribution) != distribution:
                changed.add(name)
    return {name: seen[name] for name in sorted(seen) if name not in changed}


def conditional_names(
    trials: Sequence[FrozenTrial], search_space: dict[str, BaseDistribution]
) -> frozenset[str]:
    """The names of ``search_space`` that at least one of ``trials`` lacks."""
    return frozenset(name for name in search_space if any(name not in t.params for t in trials))


def learn_conditions(space: SearchSpace, trials: Sequence[FrozenTrial]) -> dict[str, Condition]:
    """A rule for each conditional parameter of ``space`` that has a parent in ``trials``.

    See the module docstring. ``trials`` are encoded by ``space``, so each must have every
    parameter of ``space`` that is not conditional.
    """
    conditional = [name for name in space.names if name in space.conditional]
    if not conditional or not trials:
        return {}
    X, _ = space.encode_trials(trials)
    parents = [
        name
        for name in space.names
        if name not in space.conditional
        and space.param_columns[name].stop > space.param_columns[name].start
    ]
    # Categorical parents first, then numeric ones, each by name (``names`` is sorted).
    parents.sort(
        key=lambda name: not isinstance(space.distributions[name], CategoricalDistribution)
    )
    conditions: dict[str, Condition] = {}
    for name in conditional:
        has = torch.tensor([name in t.params for t in trials], dtype=torch.bool)
        if bool(has.all()) or not bool(has.any()):
            continue
        for parent in parents:
            condition = _separating_rule(parent, space.param_columns[parent], X, has, space)
            if condition is not None:
                conditions[name] = condition
                break
    return conditions


def _separating_rule(
    parent: str, columns: slice, X: torch.Tensor, has: torch.Tensor, space: SearchSpace
) -> Condition | None:
    block = X[:, columns]
    if isinstance(space.distributions[parent], CategoricalDistribution):
        choice = block.argmax(dim=1)
        with_it = set(choice[has].tolist())
        without = set(choice[~has].tolist())
        if with_it & without:
            return None
        return Condition(parent, columns, choices=frozenset(without))
    n, k = int(has.numel()), int(has.sum())
    if 2.0 / math.comb(n, k) >= _CHANCE_SEPARATION:
        return None
    u = block[:, 0]
    lo_with, hi_with = float(u[has].min()), float(u[has].max())
    lo_without, hi_without = float(u[~has].min()), float(u[~has].max())
    if hi_without < lo_with:
        return Condition(parent, columns, threshold=0.5 * (hi_without + lo_with), above=True)
    if hi_with < lo_without:
        return Condition(parent, columns, threshold=0.5 * (hi_with + lo_without), above=False)
    return None
