"""What the multi-fidelity benchmarks share: a problem with a fidelity, and a method behind
ask/tell.

:class:`MFProblem` is a minimization problem whose fidelity is a log int in
``[1, fidelity_high]``, :func:`distributions_of` its search space without the fidelity, and
:func:`space_of` that space with its :class:`Condition` s where a parameter is conditional.
:class:`Driver` is one method behind ask/tell, :class:`Rec` its recommendation, and
:class:`BestObserved` the best values it has seen. ``bench_mf.py`` runs every driver on these
problems (``run_one``) and reports on them; ``mf_peers.py`` and ``bench_lcbench.py`` add
drivers and problems of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution

N_GRID = 5  # fidelity levels considered by ISBOSampler (its default) and by the BoTorch loop


@dataclass(frozen=True)
class Condition:
    """Parameter ``child`` exists only where parameter ``parent`` equals ``value``.

    ConfigSpace's ``EqualsCondition(child, parent, value)``.
    """

    child: str
    parent: str
    value: Any


@dataclass(frozen=True)
class MFProblem:
    """A minimization problem with a fidelity ``n`` in ``[1, fidelity_high]`` (log int).

    ``observe(params, s, rng, noise_scale)`` is the value at unit fidelity ``s``, ``target`` the
    noiseless value at ``s = 1``; ``levels`` is the number of discrete fidelity levels (0 for a
    continuous fidelity), ``source_cost`` the cost of the problem's source as a function of
    ``s`` (None when it has none besides ``affine``). ``space`` is the whole search space
    without the fidelity, every branch's parameters included, and ``conditions`` says when each
    conditional parameter exists; a problem with conditions must give its ``space`` (one call
    of ``suggest`` sees only one branch), which :func:`space_of` returns.
    """

    name: str
    suggest: Callable[[optuna.Trial], dict[str, Any]]
    observe: Callable[[dict[str, Any], float, np.random.Generator, float], float]
    target: Callable[[dict[str, Any]], float]
    f_min: float
    fidelity: str
    fidelity_high: int
    levels: int = 0
    source_cost: Callable[[float], float] | None = None
    noise: str = "noiseless"
    #: cost of one run of ``params`` at ``s`` under the ``source`` cost model, where it depends
    #: on the configuration (a surrogate's training time); ``source_cost`` is then its typical
    #: value, which sets the budget and the plans of the methods that need one.
    run_cost: Callable[[dict[str, Any], float], float] | None = None
    space: dict[str, BaseDistribution] | None = None
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if self.conditions and self.space is None:
            raise ValueError(f"{self.name}: a problem with conditions must give its `space`.")
        for c in self.conditions:
            assert self.space is not None
            if c.child not in self.space or c.parent not in self.space:
                raise ValueError(f"{self.name}: {c} names a parameter outside `space`.")

    def unit(self, n: float) -> float:
        """``s = log(n) / log(fidelity_high)``, clipped to ``[0, 1]``."""
        return min(max(math.log(n) / math.log(self.fidelity_high), 0.0), 1.0)

    def value_of_unit(self, s: float) -> int:
        """The nearest valid fidelity value to ``fidelity_high ** s``."""
        n = round(self.fidelity_high ** min(max(s, 0.0), 1.0))
        return min(max(n, 1), self.fidelity_high)

    def grid(self) -> list[float]:
        """The fidelity levels (as ``s``) considered by the model-based methods.

        All levels of a discrete fidelity; else ``N_GRID`` levels evenly spaced in ``s`` and
        rounded to ints, as ISBOSampler's ``SearchSpace.fidelity_grid`` does.
        """
        if self.levels:
            values = list(range(1, self.levels + 1))
        else:
            values = [self.value_of_unit(k / (N_GRID - 1)) for k in range(N_GRID)]
        return sorted({self.unit(v) for v in values})

    def suggest_fidelity(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.fidelity, 1, self.fidelity_high, log=True)


def distributions_of(problem: MFProblem) -> dict[str, BaseDistribution]:
    """The search space without the fidelity, of a problem without conditional parameters.

    Parameters
    ----------
    problem
        The problem; its ``space`` where it gives one, else what one call of its ``suggest``
        suggests.

    Returns
    -------
    dict
        The parameters' distributions by name.

    Raises
    ------
    ValueError
        The problem has conditional parameters: no fixed list of parameters describes it, and
        a driver that needs one must take :func:`space_of` with its conditions, or refuse the
        problem.
    """
    if problem.conditions:
        raise ValueError(
            f"{problem.name} has conditional parameters "
            f"({', '.join(c.child for c in problem.conditions)}): take `space_of(problem)` "
            "and its conditions, or refuse the problem."
        )
    if problem.space is not None:
        return dict(problem.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    problem.suggest(trial)
    return dict(trial.distributions)


def space_of(problem: MFProblem) -> tuple[dict[str, BaseDistribution], tuple[Condition, ...]]:
    """The whole search space without the fidelity, and when each conditional parameter exists.

    Parameters
    ----------
    problem
        The problem.

    Returns
    -------
    tuple
        Every branch's parameters' distributions by name, and the problem's conditions (``()``
        for a problem without).
    """
    if problem.conditions:
        assert problem.space is not None
        return dict(problem.space), problem.conditions
    return distributions_of(problem), ()


@dataclass
class Rec:
    """A recommendation: ``x`` and, for model-based methods, its predicted target value."""

    params: dict[str, Any]
    value: float | None = None
    std: float | None = None
    # ISBO: what other recommendation rules pick from the same posterior (``bench_mf.RULES``).
    alternatives: dict[str, dict[str, Any]] | None = None
    # ISBO: target-fidelity evaluations behind ``value`` (0: an extrapolation).
    n_target: int | None = None


class Driver:
    """One method behind ask/tell. ``ask`` returns ``(x params, fidelity value, phase)``."""

    #: whether ``recommend`` is a model fit (then it honours ``--recommend-every``)
    expensive_recommend = False

    def ask(self) -> tuple[dict[str, Any], int, str]:
        raise NotImplementedError

    def tell(self, value: float, cost: float) -> None:
        raise NotImplementedError

    def recommend(self) -> Rec:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the method holds (temporary directories)."""


class BestObserved:
    """Best observed value overall and at the target fidelity."""

    def __init__(self) -> None:
        self.best: tuple[float, dict[str, Any]] | None = None
        self.best_target: tuple[float, dict[str, Any]] | None = None

    def add(self, params: dict[str, Any], value: float, at_target: bool) -> None:
        if self.best is None or value < self.best[0]:
            self.best = (value, params)
        if at_target and (self.best_target is None or value < self.best_target[0]):
            self.best_target = (value, params)
