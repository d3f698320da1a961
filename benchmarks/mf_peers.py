"""SMAC3's multi-fidelity facade and DEHB behind the ask/tell drivers of ``bench_mf.py``.

Both are optional peers. They are not in the ``benchmarks`` extra because DEHB 0.1.2 pins
``numpy<2`` (which would replace this project's numpy); install them by hand::

    .venv/bin/pip install smac==2.4.1                       # adds dask, ConfigSpace, emcee, ...
    .venv/bin/pip install --no-deps dehb==0.1.2 loguru==0.7.3

DEHB works with numpy 2 and without pyarrow (needed only to save its history, which these
runs never do). A problem with conditional parameters (``MFProblem.conditions``) is handed to
both as a ConfigSpace with an ``EqualsCondition`` per condition: SMAC's random forest and
DEHB's unit-cube vectors fill an inactive parameter in themselves, and the configurations they
propose leave it out, as the problem's own ``suggest`` does.

Both optimizers see the fidelity as a continuous budget in ``[1, N]`` and propose Hyperband
budgets ``N eta^-k`` (``eta = 3``); the harness rounds a budget to the nearest valid fidelity
value and charges the simulated cost of that value.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from mf_protocol import BestObserved, Condition, Driver, MFProblem, Rec, space_of
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def configspace_of(
    distributions: dict[str, BaseDistribution],
    seed: int,
    conditions: tuple[Condition, ...] = (),
) -> Any:
    """A ConfigSpace with the same parameters as an Optuna search space.

    Parameters
    ----------
    distributions
        The search space, every conditional parameter included.
    seed
        The ConfigSpace's seed.
    conditions
        When each conditional parameter exists: one ``EqualsCondition`` each.

    Returns
    -------
    ConfigSpace.ConfigurationSpace
    """
    from ConfigSpace import Categorical, ConfigurationSpace, EqualsCondition, Float, Integer

    cs = ConfigurationSpace(seed=seed)
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            cs.add(Categorical(name, list(d.choices)))
        elif isinstance(d, IntDistribution):
            cs.add(Integer(name, (d.low, d.high), log=d.log))
        elif isinstance(d, FloatDistribution):
            cs.add(Float(name, (d.low, d.high), log=d.log))
        else:
            raise ValueError(f"Unsupported distribution {d!r} for {name!r}.")
    for c in conditions:
        cs.add(EqualsCondition(cs[c.child], cs[c.parent], c.value))
    return cs


def _plain(config: Any, distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A ConfigSpace configuration as plain Python values of the Optuna types.

    An inactive conditional parameter (absent from ``config``) is left out.
    """
    params: dict[str, Any] = {}
    for name, d in distributions.items():
        if name not in config:
            continue
        v = config[name]
        if isinstance(d, IntDistribution):
            params[name] = int(v)
        elif isinstance(d, FloatDistribution):
            params[name] = float(v)
        else:
            params[name] = v.item() if isinstance(v, np.generic) else v
    return params


def _fidelity_value(problem: MFProblem, budget: float) -> int:
    return min(max(round(float(budget)), 1), problem.fidelity_high)


class SMACDriver(Driver):
    """SMAC3 ``MultiFidelityFacade`` (random forest + Hyperband, eta 3) by ask/tell.

    Recommendation: SMAC's incumbent (selected on the highest budget observed), before it has
    one the best observed configuration.
    """

    def __init__(self, problem: MFProblem, seed: int, max_trials: int) -> None:
        from smac import MultiFidelityFacade, Scenario

        self.problem = problem
        self.distributions, conditions = space_of(problem)
        self._dir = tempfile.TemporaryDirectory(prefix="bench_mf_smac_")
        scenario = Scenario(
            configspace_of(self.distributions, seed, conditions),
            name="bench_mf",
            output_directory=self._dir.name,
            deterministic=True,
            n_trials=max_trials,
            min_budget=1,
            max_budget=problem.fidelity_high,
            seed=seed,
        )

        def target(config: Any, seed: int = 0, budget: float = 1.0) -> float:
            raise RuntimeError("driven by ask/tell only")

        self.smac = MultiFidelityFacade(
            scenario,
            target,
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=3),
            overwrite=True,
            logging_level=40,
        )
        self.best = BestObserved()
        self._info: Any = None
        self._pending: tuple[dict[str, Any], int] | None = None

    def ask(self) -> tuple[dict[str, Any], int, str]:
        self._info = self.smac.ask()
        params = _plain(self._info.config, self.distributions)
        n = _fidelity_value(self.problem, self._info.budget)
        self._pending = (params, n)
        return params, n, "-"

    def tell(self, value: float, cost: float) -> None:
        from smac.runhistory.dataclasses import TrialValue

        assert self._pending is not None
        self.smac.tell(self._info, TrialValue(cost=value, time=cost))
        params, n = self._pending
        self.best.add(params, value, n >= self.problem.fidelity_high)

    def recommend(self) -> Rec:
        incumbent = self.smac.intensifier.get_incumbent()
        if incumbent is not None:
            return Rec(_plain(incumbent, self.distributions))
        assert self.best.best is not None
        return Rec(self.best.best[1])

    def close(self) -> None:
        self._dir.cleanup()


class DEHBDriver(Driver):
    """DEHB 0.1.2 (differential evolution + Hyperband, eta 3) by ask/tell.

    Recommendation: the best configuration evaluated at the target budget (DEHB's own incumbent
    mixes budgets), before the first target evaluation the best observed one.
    """

    def __init__(self, problem: MFProblem, seed: int) -> None:
        from dehb import DEHB

        self.problem = problem
        self.distributions, conditions = space_of(problem)
        self._dir = tempfile.TemporaryDirectory(prefix="bench_mf_dehb_")
        cs = configspace_of(self.distributions, seed, conditions)
        self.dehb = DEHB(
            cs=cs,
            dimensions=len(cs),
            min_fidelity=1,
            max_fidelity=problem.fidelity_high,
            eta=3,
            n_workers=1,
            seed=seed,
            output_path=self._dir.name,
            save_freq="end",  # saves only at the end of ``run``, which is never called
            log_level="ERROR",
        )
        self.best = BestObserved()
        self._job: dict[str, Any] | None = None
        self._pending: tuple[dict[str, Any], int] | None = None

    def ask(self) -> tuple[dict[str, Any], int, str]:
        job = self.dehb.ask()
        assert isinstance(job, dict)
        self._job = job
        params = _plain(job["config"], self.distributions)  # already a Configuration
        n = _fidelity_value(self.problem, job["fidelity"])
        self._pending = (params, n)
        return params, n, "-"

    def tell(self, value: float, cost: float) -> None:
        assert self._job is not None and self._pending is not None
        self.dehb.tell(self._job, {"fitness": value, "cost": cost})
        params, n = self._pending
        self.best.add(params, value, n >= self.problem.fidelity_high)

    def recommend(self) -> Rec:
        best = self.best.best_target or self.best.best
        assert best is not None
        return Rec(best[1])

    def close(self) -> None:
        from loguru import logger

        logger.remove()  # DEHB adds a log file sink per instance
        self._dir.cleanup()
