r"""Multi-fidelity benchmark with a simulated cost: ISBOSampler against Optuna, BoTorch and more.

Every run is driven by ask/tell in this one harness; the cost of each evaluation is *simulated*
(a function of the fidelity only), so results do not depend on the load of the machine. The
metric is the true simple regret *at the target fidelity* of the configuration each method
would hand back, versus cumulative cost.

Problems
--------
Every problem is a minimization of the target-fidelity value. The fidelity is exposed to Optuna
as a positive log-scale int whose upper bound is the target; with ``n`` its value and ``N`` the
upper bound, ``s = log(n) / log(N)`` in ``[0, 1]`` is exactly the unit fidelity that
ISBOSampler encodes (its lower bound is 1), and the ``s`` handed to BoTorch's functions.

- ``branin``, ``hartmann6``, ``mixed``: the synthetic problems of ``bench_synthetic.py``
  (imported from it), ``y = f(x) + beta(x) (1 - s)^2 + (sigma (1 - s) + sigma_0) eps``: biased
  and noisy at low fidelity, nearly exact at the target. The fidelity is ``n_steps`` in
  ``[1, 128]`` (their ``super_batch_size / 32``, the same ``s``). ``--noise-scale`` multiplies
  the noise (1 by default, 0 for noiseless).
- ``aug-branin`` (2 x + fidelity), ``aug-hartmann`` (6 x + fidelity), ``aug-rosenbrock``
  (``dim=4``: 2 x + the two fidelity columns, both set to ``s``; ``dim=3`` would have no term
  at all): ``botorch.test_functions.multi_fidelity``, fidelity ``s`` in ``[0, 1]`` with 1 the
  target, exposed as ``n_steps`` in ``[1, 128]``, ``s = log2(n) / 7``. Noiseless. Minimization
  in BoTorch too; optima 0.397887 (Branin; 0.3978873577 used), -3.32237 (Hartmann; the
  minimum found by L-BFGS-B, -3.322368011, used), 0 (Rosenbrock at (1, 1)).
- ``borehole`` (8 x, 5 levels) and ``wingweight`` (10 x, 4 levels):
  ``BoreholeMultiFidelity`` and ``WingWeightMultiFidelity`` (Chen et al. 2024), whose fidelity
  is a discrete index with 0 the high fidelity. Exposed as ``fidelity_level`` in ``[1, K]``
  (log int), larger closer to the target. WingWeight's levels are its index reversed
  (LF3, LF2, LF1, HF: RMSE to HF 275, 55, 9.6 over uniform x). Borehole's low fidelities are
  not ordered by index (RMSE to HF: LF1 148, LF2 55, LF3 16.6, LF4 19.4), so its levels are
  ordered by that RMSE: LF1, LF2, LF4, LF3, HF. Both are minimization problems in BoTorch
  (``_optimal_value`` is a minimum, 3.98 and 123.25); the minima here were recomputed on the
  bounds of botorch 0.18 (see ``BOREHOLE_MIN`` and ``WINGWEIGHT_MIN``). Noiseless.
- ``mixed-momentum`` and ``mixed-switch`` (``mixed_problems.py``): simulated training runs with
  a log-float learning rate, an int (width or depth), a categorical optimizer and a
  conditional ``momentum`` that exists only for SGD; the fidelity is ``epochs`` in ``[1, 81]``
  (ISBO's five levels are Hyperband's budgets at ``eta = 3``), ``f* = 0`` by construction,
  noise std ``0.01 + 0.1 (1 - s)``. The cheap fidelities are biased (a larger learning rate, a
  smaller network; the bias shrinks to nothing at the target): in ``mixed-momentum`` the
  conditional branch holds the optimum at every fidelity, in ``mixed-switch`` it looks best
  below 14 epochs and is not the target's. Each carries its whole search space and the
  condition (``MFProblem.space``, ``MFProblem.conditions``).

Cost models (simulated seconds, written to the user attribute ``isbo:cost``)
---------------------------------------------------------------------------
- ``affine``: ``5 + s``, BoTorch's multi-fidelity tutorials (``AffineFidelityCostModel`` with
  ``fixed_cost=5`` and fidelity weight 1): a cheap run is barely cheaper.
- ``steep``: ``1 + 30 s^2``: the target is 31 times dearer than the cheapest level.
- ``source`` (``borehole`` and ``wingweight`` only, not run by default): the cost table of the
  problem's source, by level 100, 10, 10, 100, 1000 (Borehole, not monotone) and 1, 10, 100,
  1000 (WingWeight).

``--budget`` is in target-fidelity evaluations (default 30): the cost budget is
``budget * cost(s=1)``, e.g. 180 s for ``affine`` and 930 s for ``steep``. Every method gets the
same budget. ``--max-trials`` is a safety cap only (the budget ends a run); results before
2026-12-07 capped every method at 100 trials, which stopped ISBO after 25-45 % of its budget
under the steep cost.

Methods
-------
- ``isbo-es``, ``isbo-mes``: ``ISBOSampler(fidelity_param=..., acquisition="es"/"mes")``;
  recommendation ``sampler.recommendation(study)`` (``.params``, ``.value``, ``.std``), or
  ``sampler.recommend(study)`` where the former does not exist (no value, std).
- ``isbo-target``: ``ISBOSampler`` ("mes") with the fidelity pinned at the target, as
  ``gp-target`` pins it for GPSampler: cost-aware max-value entropy search over ``x`` alone, an
  ablation that compares the two samplers' BO at one fidelity.
- ``gp``, ``tpe``, ``random``: Optuna's GPSampler, TPESampler, RandomSampler, fidelity as an
  ordinary parameter; ``gp-target``: GPSampler with the fidelity pinned at the target.
  Recommendation: the configuration of the best observed value, at whatever fidelity it was
  observed (what a user of those would hand back); the best among target-fidelity
  observations is recorded too (``regret_target_obs``).
- ``screen-topk`` (Egele et al. 2023): random configurations at the cheapest fidelity (the
  lowest one, except under Borehole's ``source`` costs) for half the budget, then the best
  ones, in order, at the target until the budget runs out (``k`` = what the rest of the budget
  affords). Recommendation: the best target value, before the first target evaluation the best
  cheap one.
- ``botorch-mfkg``, ``botorch-mfmes``: BoTorch's own loop as its multi-fidelity tutorials build
  it: ``SingleTaskMultiFidelityGP(data_fidelities=[s column])`` on inputs in ``[0, 1]`` and
  negated outputs (``Standardize``), ``qMultiFidelityKnowledgeGradient`` (32 fantasies,
  ``current_value`` from the posterior mean at the target) or ``qMultiFidelityMaxValueEntropy``
  (500 random candidates), ``InverseCostWeightedUtility`` with the exact cost model
  (``AffineFidelityCostModel`` for ``affine``, a ``GenericDeterministicModel`` otherwise),
  ``project_to_target_fidelity``, ``optimize_acqf_mixed`` over the 5-level fidelity grid that
  ISBOSampler uses (4 restarts, 64 raw samples, 30 L-BFGS-B iterations; one MF-KG step solves
  5 one-shot problems). Initial design: the same 10 trials as ISBO's startup count, scrambled
  Sobol ``x`` and fidelity uniform over the grid levels (the tutorials'
  ``generate_initial_data``). Ints and categoricals (``mixed``) are
  a rounded continuous relaxation; conditional parameters have none, so the loop refuses the
  problems that have them (``refusal``; ``main`` skips those runs and says so). Recommendation:
  the maximizer of the posterior mean with
  the fidelity fixed at the target (the tutorials' ``get_recommendation``), with its predicted
  value and std. When every restart of BoTorch's fit fails (a kernel matrix that is not
  positive definite), the last fitted hyperparameters are kept on the new data and the run
  records it (``fit_failures``); a failed acquisition step is a random point (``fallbacks``),
  and a failed recommendation step keeps the previous recommendation (``recommend_failures``).
- ``smac``, ``dehb`` (optional, run by default only where installed; ``benchmarks/mf_peers.py``):
  SMAC3's ``MultiFidelityFacade`` (random forest + Hyperband) and DEHB, both with ``eta = 3``
  and the fidelity as a continuous budget in ``[1, N]`` rounded to the nearest valid value; a
  conditional parameter reaches both as a ConfigSpace ``EqualsCondition``.
  Recommendation: SMAC's incumbent; DEHB's best target-budget configuration (before the first
  target evaluation its best observed one). They are kept out of the ``benchmarks`` extra
  (DEHB 0.1.2 pins ``numpy<2``, SMAC brings dask): install them with::

      .venv/bin/pip install smac==2.4.1
      .venv/bin/pip install --no-deps dehb==0.1.2 loguru==0.7.3

Metrics (``--report``)
----------------------
Per problem x cost model, over the seeds for which every method has a run: median, 25th/75th
and 90th percentiles of the regret at 25/50/100 % of the budget; the cost for each ISBO
variant's median curve to reach each peer's final median regret, as a fraction of the cost the
peer's own median curve needs; where each method spent its cost by fidelity level (and how many
model-based ISBO trials went to each level); the coverage of the 80 % interval
``value +- 1.2816 std`` of the final recommendation for the true target value; anytime plots
(``mf.png``) and a JSON summary (``mf.json``) under ``--out-dir``.

Usage::

    # smoke: every method once, a few minutes of CPU (MF-KG is most of it)
    python benchmarks/bench_mf.py --seeds 0 --budget 4 --max-trials 14 --out /tmp/mf_smoke.jsonl
    # the full benchmark, then MF-KG (the dearest method) separately, appending to the same file
    python benchmarks/bench_mf.py --jobs 2 --methods isbo-es isbo-mes gp-target gp tpe random \
        screen-topk botorch-mfmes smac dehb --out benchmarks/results/mf.jsonl
    python benchmarks/bench_mf.py --jobs 2 --methods botorch-mfkg --out benchmarks/results/mf.jsonl
    python benchmarks/bench_mf.py --report benchmarks/results/mf.jsonl
    # the mixed-space problems with a conditional parameter, against the peers that take them
    python benchmarks/bench_mf.py --jobs 2 --problems mixed-momentum mixed-switch \
        --methods isbo-mes gp-target gp tpe tpe-target random-target smac \
        --out benchmarks/results/mf_mixed.jsonl
    python benchmarks/bench_mf.py --report benchmarks/results/mf_mixed.jsonl \
        --out-dir benchmarks/results/mf_mixed

Seconds per model-based trial in the smoke runs (10-20 trials, one torch thread, a 2-core
machine at load ~3 from other jobs): ISBO ES 0.7-1.4, MES 0.5-1.1, BoTorch MF-MES 4-7,
MF-KG 17-55, GPSampler 0.2, SMAC 0.4, TPE, DEHB, random and screen-topk below 0.01. ISBO's
and BoTorch's recommendation (a GP fit, and for BoTorch a posterior-mean optimization) after
every trial is part of it; ``--recommend-every 5`` makes it cheaper. In the full runs under the
affine cost (31-34 trials, ``--recommend-every 3``, two processes on the otherwise idle 2-core
machine), BoTorch's loops took 1.1-2.2 s per trial with MF-MES (34-69 s a run) and 5-9 s with
MF-KG (3-5 min a run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_isbo import GPPrior, ISBOSampler
from optuna_isbo.recommendation import Recommendation, Rule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_synthetic import PROBLEMS as SYNTHETIC  # noqa: E402
from bench_synthetic import load_runs  # noqa: E402
from harness import run_tasks  # noqa: E402
from mf_protocol import BestObserved, Driver, MFProblem, Rec, distributions_of  # noqa: E402
from mixed_problems import build_mixed_problems  # noqa: E402

N_STEPS = "n_steps"
N_STEPS_HIGH = 128
LEVEL = "fidelity_level"
N_INIT = 10  # ISBOSampler's default startup trials; the BoTorch loop's initial design
Z80 = 1.2815515655446004  # the 90 % normal quantile: value +- Z80 std is an 80 % interval
METHODS = (
    "isbo-es",
    "isbo-mes",
    "isbo-target",
    "gp-target",
    "gp",
    "tpe",
    "tpe-target",
    "random",
    "random-target",
    "screen-topk",
    "botorch-mfkg",
    "botorch-mfmes",
    "smac",
    "dehb",
)
OPTUNA_METHODS = (
    "isbo-es",
    "isbo-mes",
    "isbo-target",
    "gp",
    "gp-target",
    "tpe",
    "tpe-target",
    "random",
    "random-target",
)
OPTIONAL_METHODS = {"smac": "smac", "dehb": "dehb"}  # method -> module it needs
COSTS = ("affine", "steep", "source")
SCREEN_FRACTION = 0.5
BOTORCH_SETTINGS: dict[str, Any] = {
    "num_restarts": 4,
    "raw_samples": 64,
    "maxiter": 30,  # L-BFGS-B iterations of the acquisition optimization
    "rec_maxiter": 100,  # ... and of the posterior-mean recommendation
    "kg_num_fantasies": 32,
    "mes_candidates": 500,
}

# Target-fidelity minima of the Chen et al. problems on botorch 0.18's bounds, computed by
# minimizing the HF function: 200,000 uniform points, then L-BFGS-B (autograd gradients, box
# bounds) from the 20 best. Both lie on the boundary: Borehole at r_w, T_u, T_l, H_u, K_w low
# and r, H_l, L high (3.98546); WingWeight at every variable low except sweep 0 and t_c high
# (123.25367). botorch's ``_optimal_value`` says 3.98 and 123.25.
BOREHOLE_MIN = 3.9854638032845155
WINGWEIGHT_MIN = 123.25367170091783


# -- problems --------------------------------------------------------------------------------
def _synthetic_problem(name: str) -> MFProblem:
    p = SYNTHETIC[name]

    def observe(
        params: dict[str, Any], s: float, rng: np.random.Generator, noise_scale: float
    ) -> float:
        std = noise_scale * (p.noise_std * (1 - s) + p.target_noise_std)
        return p.f(params) + p.bias(params) * (1 - s) ** 2 + std * float(rng.normal())

    return MFProblem(
        name=name,
        suggest=p.suggest,
        observe=observe,
        target=p.f,
        f_min=p.f_min,
        fidelity=N_STEPS,
        fidelity_high=N_STEPS_HIGH,
        noise=f"noise std {p.noise_std:g} (1 - s) + {p.target_noise_std:g} (bench_synthetic)",
    )


def _botorch_problem(
    name: str,
    function: Any,
    names: Sequence[str],
    fidelity_columns: Sequence[int],
    f_min: float,
    level_index: Sequence[int] | None = None,
    level_cost: Sequence[float] | None = None,
) -> MFProblem:
    """Wrap a ``botorch.test_functions.multi_fidelity`` function.

    ``level_index[k]`` is the source's fidelity index of level ``k + 1`` (discrete fidelity);
    without it, every fidelity column is set to ``s``.
    """
    bounds = function.bounds.to(torch.float64)
    x_columns = [c for c in range(bounds.shape[1]) if c not in fidelity_columns]
    assert len(x_columns) == len(names)
    ranges = [(float(bounds[0, c]), float(bounds[1, c])) for c in x_columns]
    n_levels = len(level_index) if level_index is not None else 0

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        return {
            n: trial.suggest_float(n, lo, hi) for n, (lo, hi) in zip(names, ranges, strict=True)
        }

    def evaluate(params: dict[str, Any], s: float) -> float:
        row = torch.empty(bounds.shape[1], dtype=torch.float64)
        row[x_columns] = torch.tensor([float(params[n]) for n in names], dtype=torch.float64)
        if level_index is None:
            row[list(fidelity_columns)] = s
        else:
            level = min(max(round(n_levels**s), 1), n_levels)
            row[list(fidelity_columns)] = float(level_index[level - 1])
        with torch.no_grad():
            return float(function.evaluate_true(row.unsqueeze(0))[0])

    source_cost = None
    if level_cost is not None:
        table = list(level_cost)

        def source_cost(s: float) -> float:
            return table[min(max(round(n_levels**s), 1), n_levels) - 1]

    return MFProblem(
        name=name,
        suggest=suggest,
        observe=lambda params, s, rng, noise_scale: evaluate(params, s),
        target=lambda params: evaluate(params, 1.0),
        f_min=f_min,
        fidelity=LEVEL if level_index is not None else N_STEPS,
        fidelity_high=n_levels if level_index is not None else N_STEPS_HIGH,
        levels=n_levels,
        source_cost=source_cost,
    )


def build_problems() -> dict[str, MFProblem]:
    from botorch.test_functions import multi_fidelity as mf

    problems = {name: _synthetic_problem(name) for name in SYNTHETIC}
    problems["aug-branin"] = _botorch_problem(
        "aug-branin", mf.AugmentedBranin(), ["x1", "x2"], [2], 0.39788735772973816
    )
    problems["aug-hartmann"] = _botorch_problem(
        "aug-hartmann",
        mf.AugmentedHartmann(),
        [f"x{i}" for i in range(6)],
        [6],
        -3.322368011415515,
    )
    problems["aug-rosenbrock"] = _botorch_problem(
        "aug-rosenbrock", mf.AugmentedRosenbrock(dim=4), ["x1", "x2"], [2, 3], 0.0
    )
    problems["borehole"] = _botorch_problem(
        "borehole",
        mf.BoreholeMultiFidelity(),
        ["r_w", "r", "T_u", "T_l", "H_u", "H_l", "L", "K_w"],
        [8],
        BOREHOLE_MIN,
        level_index=[1, 2, 4, 3, 0],
        level_cost=[100.0, 10.0, 10.0, 100.0, 1000.0],
    )
    problems["wingweight"] = _botorch_problem(
        "wingweight",
        mf.WingWeightMultiFidelity(),
        ["s_w", "w_fw", "A", "Lambda_deg", "q", "lam", "t_c", "N_z", "w_dg", "w_pp"],
        [10],
        WINGWEIGHT_MIN,
        level_index=[3, 2, 1, 0],
        level_cost=[1.0, 10.0, 100.0, 1000.0],
    )
    problems.update(build_mixed_problems())
    return problems


PROBLEMS = build_problems()


def cost_of(
    cost_model: str, problem: MFProblem, s: float, params: dict[str, Any] | None = None
) -> float:
    """Simulated cost in seconds of one evaluation at unit fidelity ``s``.

    With ``params``, the cost of that configuration where the problem's source cost depends on
    it (``MFProblem.run_cost``); without, the typical cost at ``s``.
    """
    if cost_model == "source" and params is not None and problem.run_cost is not None:
        return problem.run_cost(params, s)
    if cost_model == "affine":
        return 5.0 + s
    if cost_model == "steep":
        return 1.0 + 30.0 * s**2
    if cost_model == "source" and problem.source_cost is not None:
        return problem.source_cost(s)
    raise ValueError(f"Cost model {cost_model!r} is not defined for {problem.name!r}.")


def has_cost(problem: MFProblem, cost_model: str) -> bool:
    return cost_model != "source" or problem.source_cost is not None


# -- a unit-cube codec of the x part of a search space, for the non-Optuna methods -----------
class Codec:
    """``x`` <-> ``[0, 1]^d``: floats linear or log; ints and categoricals relaxed and rounded.

    An int owns ``[low - 1/2, high + 1/2]`` (on a log scale for a log int) and decodes to the
    nearest int; a categorical with ``C`` choices owns ``C`` equal cells and is encoded at the
    centre of its cell.
    """

    def __init__(self, distributions: dict[str, BaseDistribution]) -> None:
        self.distributions = distributions
        self.names = list(distributions)
        self.dim = len(self.names)

    @staticmethod
    def _span(d: FloatDistribution | IntDistribution) -> tuple[float, float, bool]:
        pad = 0.5 if isinstance(d, IntDistribution) else 0.0
        return float(d.low) - pad, float(d.high) + pad, bool(d.log)

    def decode(self, u: Sequence[float]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, ui in zip(self.names, u, strict=True):
            d = self.distributions[name]
            ui = min(max(float(ui), 0.0), 1.0)
            if isinstance(d, CategoricalDistribution):
                params[name] = d.choices[min(int(ui * len(d.choices)), len(d.choices) - 1)]
                continue
            assert isinstance(d, (FloatDistribution, IntDistribution))
            lo, hi, log = self._span(d)
            v = math.exp(math.log(lo) + ui * math.log(hi / lo)) if log else lo + ui * (hi - lo)
            if isinstance(d, IntDistribution):
                params[name] = int(min(max(round(v), d.low), d.high))
            else:
                params[name] = min(max(v, d.low), d.high)
        return params

    def encode(self, params: dict[str, Any]) -> list[float]:
        u = []
        for name in self.names:
            d = self.distributions[name]
            v = params[name]
            if isinstance(d, CategoricalDistribution):
                u.append((d.choices.index(v) + 0.5) / len(d.choices))
                continue
            assert isinstance(d, (FloatDistribution, IntDistribution))
            lo, hi, log = self._span(d)
            if log:
                u.append((math.log(v) - math.log(lo)) / math.log(hi / lo))
            else:
                u.append((float(v) - lo) / (hi - lo))
        return u


# -- methods ---------------------------------------------------------------------------------
# The default rule with no extrapolated recommendation once a target evaluation exists.
NO_EXTRAPOLATION = "default, no extrapolation"

# ISBO's recommendation under each fixed rule of ``optuna_isbo.recommendation.Rule``, next to
# the default, which picks the rule from the verification checks: the same trials and the same
# posterior, so the rules are compared on identical studies.
RULES: tuple[Rule, ...] = ("extrapolate", "supported", "observed")


class OptunaDriver(Driver):
    """An Optuna sampler behind ask/tell; ``prior`` is an ISBO method's pre-trained GP prior,
    ``isbo_options`` further keyword arguments of its ``ISBOSampler``."""

    def __init__(
        self,
        problem: MFProblem,
        method: str,
        seed: int,
        prior: GPPrior | None = None,
        isbo_options: dict[str, Any] | None = None,
    ) -> None:
        self.problem, self.method = problem, method
        self.is_isbo = method.startswith("isbo")
        self.expensive_recommend = self.is_isbo
        self.sampler: optuna.samplers.BaseSampler
        if self.is_isbo:
            self.sampler = ISBOSampler(
                seed=seed,
                fidelity_param=problem.fidelity,
                acquisition="es" if method == "isbo-es" else "mes",
                prior=prior,
                **(isbo_options or {}),
            )
        elif method in ("gp", "gp-target"):
            self.sampler = optuna.samplers.GPSampler(seed=seed)
        elif method in ("tpe", "tpe-target"):
            self.sampler = optuna.samplers.TPESampler(seed=seed)
        elif method in ("random", "random-target"):
            self.sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise ValueError(f"Unknown Optuna method {method!r}.")
        self.study = optuna.create_study(sampler=self.sampler)
        self.best = BestObserved()
        # ISBO: calibration factor and rule of the latest recommendation.
        self.kappa: float | None = None
        self.rule: str | None = None
        self._trial: optuna.Trial | None = None
        self._params: dict[str, Any] = {}
        self._n = 0

    def ask(self) -> tuple[dict[str, Any], int, str]:
        trial = self.study.ask()
        params = self.problem.suggest(trial)
        if self.method.endswith("-target"):
            n = self.problem.fidelity_high
        else:
            n = self.problem.suggest_fidelity(trial)
        phase = "-"
        if self.is_isbo:
            attrs = self.study._storage.get_trial_user_attrs(trial._trial_id)
            phase = str(attrs.get("isbo:phase", "startup"))
        self._trial, self._params, self._n = trial, params, n
        return params, n, phase

    def tell(self, value: float, cost: float) -> None:
        assert self._trial is not None
        self._trial.set_user_attr("isbo:cost", cost)
        self.study.tell(self._trial, value)
        self.best.add(self._params, value, self._n >= self.problem.fidelity_high)

    def recommend(self) -> Rec:
        if not self.is_isbo:
            assert self.best.best is not None
            return Rec(self.best.best[1])
        return self._isbo_recommendation()

    def _isbo_recommendation(self) -> Rec:
        """``ISBOSampler.recommendation``, step by step, with the other rules' picks.

        One posterior (one fit of the objective GP, as ``recommendation`` makes) serves every
        rule of ``RULES``; the default rule's pick is what ``recommendation`` returns.
        Under the rule ``"observed"`` the default's uncertainty comes from a GP of the target
        trials alone; the fixed rules are all applied to the GP of every trial.
        """
        from optuna_isbo.decisions import choose_recommendation as _choose

        sampler = self.sampler
        assert isinstance(sampler, ISBOSampler)
        space, completed = sampler._recommendation_data(self.study)
        evidence = sampler._fits.target_evidence(self.study, space, completed)
        default = None if evidence is None else evidence.rule
        every_trial = evidence
        if evidence is not None and evidence.rule == "observed":
            every_trial = sampler._fits.target_evidence(
                self.study, space, completed, target_only=False
            )
        self.kappa = None if evidence is None else evidence.kappa
        self.rule = default
        picks: dict[str, Recommendation] = {
            name: _choose(self.study, space, completed, every_trial, name) for name in RULES
        }
        picks["default"] = _choose(self.study, space, completed, evidence, default)
        alternatives = {}
        for name, r in picks.items():
            params = dict(r.params)
            params.pop(self.problem.fidelity, None)
            alternatives[name] = params
        r = picks["default"]
        return Rec(
            alternatives.pop("default"),
            float(r.value),
            float(r.std),
            alternatives,
            r.n_target_evaluations,
        )


class ScreenTopK(Driver):
    """Random ``x`` at the cheapest fidelity for ``SCREEN_FRACTION`` of the budget, then the best
    screened configurations, best first, at the target until the budget runs out."""

    def __init__(
        self,
        problem: MFProblem,
        cost_model: str,
        budget: float,
        max_trials: int,
        seed: int,
    ) -> None:
        self.problem = problem
        self.study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        self.screen_budget = SCREEN_FRACTION * budget
        target_cost = cost_of(cost_model, problem, 1.0)
        n_verify = math.floor((budget - self.screen_budget) / target_cost)
        self.max_screen = max(max_trials - n_verify, 1)
        # The cheapest level below the target (the lowest one under ``affine`` and ``steep``;
        # under Borehole's ``source`` costs the lowest level is not the cheapest).
        levels = [problem.value_of_unit(s) for s in problem.grid()[:-1]]
        self.screen_level = min(
            levels, key=lambda n: (cost_of(cost_model, problem, problem.unit(n)), n)
        )
        self.spent = 0.0
        self.screened: list[tuple[float, dict[str, Any]]] = []
        self.queue: list[dict[str, Any]] | None = None
        self.best = BestObserved()
        self._pending: tuple[dict[str, Any], int] | None = None

    def ask(self) -> tuple[dict[str, Any], int, str]:
        screening = self.queue is None and (
            self.spent < self.screen_budget and len(self.screened) < self.max_screen
        )
        if not screening and self.queue is None:
            self.queue = [p for _, p in sorted(self.screened, key=lambda vp: vp[0])]
        if screening or not self.queue:
            # Screening, or every screened configuration is verified: a fresh random one.
            trial = self.study.ask()
            params = self.problem.suggest(trial)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            n = self.screen_level if screening else self.problem.fidelity_high
            phase = "screen" if screening else "verify"
        else:
            params, n, phase = self.queue.pop(0), self.problem.fidelity_high, "verify"
        self._pending = (params, n)
        return params, n, phase

    def tell(self, value: float, cost: float) -> None:
        assert self._pending is not None
        params, n = self._pending
        self.spent += cost
        if n < self.problem.fidelity_high:
            self.screened.append((value, params))
        self.best.add(params, value, n >= self.problem.fidelity_high)

    def recommend(self) -> Rec:
        best = self.best.best_target or self.best.best
        assert best is not None
        return Rec(best[1])


# The BoTorch loop's per-run counts of steps that failed and were replaced (a kept fit, a random
# point, a kept recommendation); written to the run record and summed by the report.
TROUBLES = ("fit_failures", "fallbacks", "recommend_failures")


class BoTorchDriver(Driver):
    """BoTorch's multi-fidelity tutorial loop (MF-KG or MF-MES) behind ask/tell.

    A problem with conditional parameters raises ``ValueError`` (:func:`refusal`).
    """

    expensive_recommend = True

    def __init__(self, problem: MFProblem, cost_model: str, acquisition: str, seed: int) -> None:
        from botorch.acquisition.cost_aware import InverseCostWeightedUtility
        from botorch.models.cost import AffineFidelityCostModel
        from botorch.models.deterministic import GenericDeterministicModel

        reason = refusal(problem, f"botorch-mf{acquisition}")
        if reason is not None:
            raise ValueError(reason)
        self.problem, self.acquisition = problem, acquisition
        self.codec = Codec(distributions_of(problem))
        self.d = self.codec.dim  # the fidelity is column d
        self.D = self.d + 1
        self.bounds = torch.stack(
            [torch.zeros(self.D, dtype=torch.float64), torch.ones(self.D, dtype=torch.float64)]
        )
        self.grid = problem.grid()
        torch.manual_seed(seed)
        rng = np.random.default_rng([seed, 104729])
        sobol = torch.quasirandom.SobolEngine(self.d, scramble=True, seed=seed)
        self.init_x = sobol.draw(N_INIT, dtype=torch.float64)
        self.init_s = [self.grid[int(k)] for k in rng.integers(len(self.grid), size=N_INIT)]
        if cost_model == "affine":
            cost = AffineFidelityCostModel(fidelity_weights={self.d: 1.0}, fixed_cost=5.0)
        else:
            levels = torch.tensor(self.grid, dtype=torch.float64)
            level_costs = torch.tensor(
                [cost_of(cost_model, problem, s) for s in self.grid], dtype=torch.float64
            )

            def cost_fn(X: torch.Tensor) -> torch.Tensor:
                s = X[..., self.d : self.d + 1]
                if cost_model == "steep":
                    return 1.0 + 30.0 * s**2
                # A lookup by the nearest grid level (the source's cost table).
                k = (s.unsqueeze(-1) - levels).abs().argmin(dim=-1)
                return level_costs[k]

            cost = GenericDeterministicModel(cost_fn)
        self.cost_utility = InverseCostWeightedUtility(cost_model=cost)
        self.X: list[list[float]] = []
        self.Y: list[float] = []
        self._pending: list[float] | None = None
        self._model: Any = None
        self._model_size = -1
        self._rec: tuple[int, Rec, torch.Tensor] | None = None
        self.fallbacks = 0
        self.fit_failures = 0
        self.recommend_failures = 0

    def _project(self, X: torch.Tensor) -> torch.Tensor:
        from botorch.acquisition.utils import project_to_target_fidelity

        return project_to_target_fidelity(X, target_fidelities={self.d: 1.0}, d=self.D)

    def _fit(self) -> Any:
        if self._model_size == len(self.Y):
            return self._model
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskMultiFidelityGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        train_X = torch.tensor(self.X, dtype=torch.float64)
        # BoTorch maximizes: the model sees the negated values.
        train_Y = -torch.tensor(self.Y, dtype=torch.float64).unsqueeze(-1)
        model = SingleTaskMultiFidelityGP(
            train_X, train_Y, outcome_transform=Standardize(m=1), data_fidelities=[self.d]
        )
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        except ModelFittingError:
            # Every restart of BoTorch's fit hit a kernel matrix that is not positive definite
            # (the linear truncated fidelity kernel at large outputscales). The last fitted
            # hyperparameters are kept on the new data, as a loop that refits only now and then
            # would have them; the outcome transform is the new data's own.
            self.fit_failures += 1
            if self._model is not None:
                state = {
                    k: v
                    for k, v in self._model.state_dict().items()
                    if not k.startswith("outcome_transform")
                }
                model.load_state_dict(state, strict=False)
            model.eval()
        self._model, self._model_size = model, len(self.Y)
        return model

    def _posterior_mean_max(self, model: Any) -> tuple[Rec, torch.Tensor]:
        """The tutorials' ``get_recommendation``: max of the posterior mean at the target."""
        from botorch.acquisition import PosteriorMean
        from botorch.acquisition.fixed_feature import FixedFeatureAcquisitionFunction
        from botorch.optim import optimize_acqf

        acqf = FixedFeatureAcquisitionFunction(
            acq_function=PosteriorMean(model), d=self.D, columns=[self.d], values=[1.0]
        )
        x, value = optimize_acqf(
            acqf,
            bounds=self.bounds[:, : self.d],
            q=1,
            num_restarts=BOTORCH_SETTINGS["num_restarts"],
            raw_samples=BOTORCH_SETTINGS["raw_samples"],
            options={"batch_limit": 8, "maxiter": BOTORCH_SETTINGS["rec_maxiter"]},
        )
        params = self.codec.decode(x[0].tolist())
        # Predict at the rounded configuration that is actually handed back.
        u = torch.tensor(self.codec.encode(params) + [1.0], dtype=torch.float64)
        with torch.no_grad():
            post = model.posterior(u.unsqueeze(0))
            mean, var = float(post.mean.squeeze()), float(post.variance.squeeze())
        return Rec(params, -mean, math.sqrt(max(var, 0.0))), value.detach()

    def recommend(self) -> Rec:
        if self._rec is not None and self._rec[0] == len(self.Y):
            return self._rec[1]
        if len(self.Y) < 2:
            best = int(np.argmin(self.Y))
            return Rec(self.codec.decode(self.X[best][: self.d]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec, value = self._posterior_mean_max(self._fit())
        except (RuntimeError, ValueError) as err:  # e.g. a posterior that is not PSD
            if self._rec is None:
                raise
            # A loop whose recommendation step fails keeps the one it had.
            self.recommend_failures += 1
            print(f"botorch-{self.acquisition}: {err!r}; previous recommendation", file=sys.stderr)
            return self._rec[1]
        self._rec = (len(self.Y), rec, value)
        return rec

    def _next_point(self) -> list[float]:
        from botorch.acquisition import (
            qMultiFidelityKnowledgeGradient,
            qMultiFidelityMaxValueEntropy,
        )
        from botorch.optim import optimize_acqf_mixed

        model = self._fit()
        acqf: Any
        if self.acquisition == "kg":
            if self._rec is None or self._rec[0] != len(self.Y):
                rec, value = self._posterior_mean_max(model)
                self._rec = (len(self.Y), rec, value)
            acqf = qMultiFidelityKnowledgeGradient(
                model=model,
                num_fantasies=BOTORCH_SETTINGS["kg_num_fantasies"],
                current_value=self._rec[2],
                cost_aware_utility=self.cost_utility,
                project=self._project,
            )
        else:
            candidates = torch.rand(
                BOTORCH_SETTINGS["mes_candidates"], self.D, dtype=torch.float64
            )
            acqf = qMultiFidelityMaxValueEntropy(
                model=model,
                candidate_set=candidates,
                cost_aware_utility=self.cost_utility,
                project=self._project,
            )
        x, _ = optimize_acqf_mixed(
            acqf,
            bounds=self.bounds,
            q=1,
            num_restarts=BOTORCH_SETTINGS["num_restarts"],
            raw_samples=BOTORCH_SETTINGS["raw_samples"],
            fixed_features_list=[{self.d: s} for s in self.grid],
            options={"batch_limit": 4, "maxiter": BOTORCH_SETTINGS["maxiter"]},
        )
        return x[0].tolist()

    def ask(self) -> tuple[dict[str, Any], int, str]:
        n_done = len(self.Y)
        if n_done < N_INIT:
            u, s, phase = self.init_x[n_done].tolist(), self.init_s[n_done], "startup"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    point = self._next_point()
                u, s, phase = point[: self.d], point[self.d], "model"
            except (RuntimeError, ValueError) as err:  # a failed fit or optimization
                self.fallbacks += 1
                print(f"botorch-{self.acquisition}: {err!r}; a random point", file=sys.stderr)
                u = torch.rand(self.d, dtype=torch.float64).tolist()
                s, phase = self.grid[int(torch.randint(len(self.grid), (1,)))], "fallback"
        params = self.codec.decode(u)
        n = self.problem.value_of_unit(s)
        self._pending = self.codec.encode(params) + [self.problem.unit(n)]
        return params, n, phase

    def tell(self, value: float, cost: float) -> None:
        assert self._pending is not None
        self.X.append(self._pending)
        self.Y.append(value)


# Methods with one fixed input per parameter and no way to say when a parameter exists.
FIXED_SPACE_METHODS = ("botorch-mfkg", "botorch-mfmes")


def refusal(problem: MFProblem, method: str) -> str | None:
    """Why ``method`` cannot run on ``problem``, or None when it can.

    BoTorch's loop relaxes every parameter to one column of the unit cube (:class:`Codec`); it
    has no way to leave out a conditional parameter outside its branch, and filling it in would
    hand its GP a column that matters in one branch only, so it refuses problems with
    conditions. Every other method takes them: the Optuna samplers and ``screen-topk`` through
    the problem's ``suggest``, SMAC3 and DEHB through a ConfigSpace with its conditions
    (``mf_peers.py``).

    Parameters
    ----------
    problem
        The problem.
    method
        A name from ``METHODS``.

    Returns
    -------
    str or None
        The reason, one sentence naming the method, the problem and its conditional parameters.
    """
    if method in FIXED_SPACE_METHODS and problem.conditions:
        names = ", ".join(
            f"{c.child} (only when {c.parent} == {c.value!r})" for c in problem.conditions
        )
        return (
            f"{method} cannot run on {problem.name}: its unit-cube relaxation has no conditional "
            f"parameters, and {problem.name} has {names}."
        )
    return None


def make_driver(
    problem: MFProblem,
    cost_model: str,
    method: str,
    seed: int,
    budget: float,
    max_trials: int,
) -> Driver:
    reason = refusal(problem, method)
    if reason is not None:
        raise ValueError(reason)
    if method in OPTUNA_METHODS:
        return OptunaDriver(problem, method, seed)
    if method == "screen-topk":
        return ScreenTopK(problem, cost_model, budget, max_trials, seed)
    if method in ("botorch-mfkg", "botorch-mfmes"):
        return BoTorchDriver(problem, cost_model, "kg" if method.endswith("kg") else "mes", seed)
    if method == "smac":
        from mf_peers import SMACDriver

        return SMACDriver(problem, seed, max_trials)
    if method == "dehb":
        from mf_peers import DEHBDriver

        return DEHBDriver(problem, seed)
    raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")


def run_one(
    problem: MFProblem,
    cost_model: str,
    method: str,
    seed: int,
    budget: float,
    max_trials: int,
    recommend_every: int = 1,
    noise_scale: float = 1.0,
    driver_factory: Callable[..., Driver] | None = None,
) -> dict[str, Any]:
    """One run under a cost budget of ``budget`` target-fidelity evaluations.

    ``driver_factory`` (default :func:`make_driver`, same arguments) builds the method.

    After every trial the method's recommendation is scored by its noiseless target value. A
    model-based recommendation (ISBO, BoTorch) is refreshed after every ``recommend_every``-th
    trial and after the last one; in between the previous one stands (before the first one, the
    best observed configuration).
    """
    wall_start = time.perf_counter()
    budget_cost = budget * cost_of(cost_model, problem, 1.0)
    torch.manual_seed(seed)
    driver = (driver_factory or make_driver)(
        problem, cost_model, method, seed, budget_cost, max_trials
    )
    rng = np.random.default_rng([seed, 7919])
    best = BestObserved()
    cumulative = 0.0
    rec: Rec | None = None
    regret_rules: dict[str, list[float]] = {name: [] for name in RULES}
    isbo_state: dict[str, list[Any]] = {"kappa": [], "rule": []}
    out: dict[str, list[Any]] = {
        k: []
        for k in (
            "cumulative_cost",
            "cost",
            "fidelity",
            "fidelity_unit",
            "phase",
            "value",
            "regret",
            "regret_target_obs",
            "pred_value",
            "pred_std",
            "pred_n_target",
            "true_value",
            "seconds",
        )
    }
    try:
        while cumulative < budget_cost and len(out["cost"]) < max_trials:
            start = time.perf_counter()
            params, n, phase = driver.ask()
            seconds = time.perf_counter() - start
            s = problem.unit(n)
            value = problem.observe(params, s, rng, noise_scale)
            cost = cost_of(cost_model, problem, s, params)
            start = time.perf_counter()
            driver.tell(value, cost)
            seconds += time.perf_counter() - start
            cumulative += cost
            best.add(params, value, n >= problem.fidelity_high)
            n_done = len(out["cost"]) + 1
            last = cumulative >= budget_cost or n_done >= max_trials
            if not driver.expensive_recommend or n_done % recommend_every == 0 or last:
                start = time.perf_counter()
                rec = driver.recommend()
                seconds += time.perf_counter() - start
            elif rec is None:
                assert best.best is not None
                rec = Rec(best.best[1])
            true_value = problem.target(rec.params)
            if isinstance(driver, OptunaDriver) and driver.is_isbo:
                isbo_state["kappa"].append(driver.kappa)
                isbo_state["rule"].append(driver.rule)
                for name in RULES:
                    alt = (rec.alternatives or {}).get(name, rec.params)
                    regret_rules[name].append(problem.target(alt) - problem.f_min)
            out["cumulative_cost"].append(cumulative)
            out["cost"].append(cost)
            out["fidelity"].append(n)
            out["fidelity_unit"].append(s)
            out["phase"].append(phase)
            out["value"].append(value)
            out["regret"].append(true_value - problem.f_min)
            out["regret_target_obs"].append(
                problem.target(best.best_target[1]) - problem.f_min if best.best_target else None
            )
            out["pred_value"].append(_finite_or_none(rec.value))
            out["pred_std"].append(_finite_or_none(rec.std))
            out["pred_n_target"].append(rec.n_target)
            out["true_value"].append(true_value)
            out["seconds"].append(seconds)
    finally:
        driver.close()
    return {
        "problem": problem.name,
        "cost_model": cost_model,
        "method": method,
        "seed": seed,
        "budget": budget,
        "budget_cost": budget_cost,
        "target_cost": cost_of(cost_model, problem, 1.0),
        "max_trials": max_trials,
        "recommend_every": recommend_every,
        "noise_scale": noise_scale,
        "grid": problem.grid(),
        "fidelity_high": problem.fidelity_high,
        "fidelity_name": problem.fidelity,
        **out,
        "sampler_seconds": float(sum(out["seconds"])),
        "wall_seconds": time.perf_counter() - wall_start,
        **{k: getattr(driver, k, 0) for k in TROUBLES},
        **({"regret_rules": regret_rules, **isbo_state} if any(regret_rules.values()) else {}),
    }


def kept_study(
    storage: str,
    problem: MFProblem,
    cost_model: str,
    method: str,
    seed: int,
    budget: float,
    max_trials: int,
    driver_factory: Callable[..., Driver] | None = None,
) -> optuna.Study:
    """The finished study of one :func:`run_one` of an Optuna method, kept in ``storage``
    under the problem's name (for a pre-trained prior); run only where it is not there yet."""
    if problem.name in optuna.study.get_all_study_names(storage):
        return optuna.load_study(study_name=problem.name, storage=storage)
    drivers: list[Driver] = []

    def factory(*args: Any) -> Driver:
        drivers.append((driver_factory or make_driver)(*args))
        return drivers[-1]

    run_one(problem, cost_model, method, seed, budget, max_trials, driver_factory=factory)
    driver = drivers[0]
    if not isinstance(driver, OptunaDriver):
        raise ValueError(f"{method!r} runs no Optuna study.")
    study = optuna.create_study(study_name=problem.name, storage=storage)
    study.add_trials(driver.study.trials)
    print(f"[{problem.name}] kept a study of {len(driver.study.trials)} trials", flush=True)
    return study


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# -- report ----------------------------------------------------------------------------------
def prior_goals(
    runs: list[dict[str, Any]], method: str = "isbo-prior", base: str = "isbo-mes"
) -> dict[str, Any]:
    """The pre-trained prior's goals on LCBench, per task; printed as a table.

    Per task, over the seeds both methods have: final median and 90th percentile regret of
    ``method`` and ``base``; the cost at which ``method``'s median curve first reaches
    ``base``'s final median, as a share of the budget (goal: at most a third); and by seed,
    how often ``method`` ends lower and higher.
    """
    table: dict[str, Any] = {}
    print(
        f"\n### {method} against {base}\n\n| task | {method} median [90th] | {base} median "
        f"[90th] | median ratio | reaches {base}'s final median at | lower / higher |\n"
        "|---|---|---|---|---|---|"
    )
    for task in sorted({r["problem"] for r in runs}):
        by: dict[str, dict[int, dict[str, Any]]] = {}
        for r in runs:
            if r["problem"] == task and r["method"] in (method, base):
                by.setdefault(r["method"], {})[r["seed"]] = r
        if len(by) < 2:
            continue
        seeds = sorted(set(by[method]) & set(by[base]))
        budget = float(np.median([by[base][s]["budget_cost"] for s in seeds]))
        final = {m: np.array([regret_at(by[m][s], budget) for s in seeds]) for m in by}
        # The median curve changes only where a run's trial ends: those costs are exact.
        grid = np.array(
            sorted({c for s in seeds for c in by[method][s]["cumulative_cost"] if c <= budget})
            or [budget]
        )
        curve = np.median([[regret_at(by[method][s], c) for c in grid] for s in seeds], axis=0)
        target = float(np.median(final[base]))
        hits = np.nonzero(curve <= target + 1e-12)[0]
        row = {
            "median": float(np.median(final[method])),
            "p90": float(np.percentile(final[method], 90)),
            "base_median": target,
            "base_p90": float(np.percentile(final[base], 90)),
            "reach_fraction": float(grid[hits[0]] / budget) if hits.size else math.inf,
            "lower": int((final[method] < final[base]).sum()),
            "higher": int((final[method] > final[base]).sum()),
            "seeds": len(seeds),
        }
        table[task] = row
        ratio = row["median"] / target if target > 0 else math.inf
        print(
            f"| {task} | {row['median']:.4f} [{row['p90']:.4f}] | {target:.4f} "
            f"[{row['base_p90']:.4f}] | {ratio:.2f} | {row['reach_fraction']:.2f} of the "
            f"budget | {row['lower']} / {row['higher']} |"
        )
    n = len(table)
    print(
        f"\n{base}'s final median reached within a third of the budget on "
        f"{sum(r['reach_fraction'] <= 1 / 3 for r in table.values())} of {n}; final median at "
        f"most {base}'s on {sum(r['median'] <= r['base_median'] for r in table.values())} of "
        f"{n}, 90th percentile on {sum(r['p90'] <= r['base_p90'] for r in table.values())}."
    )
    return table


def regret_at(run: dict[str, Any], cost: float, key: str = "regret") -> float:
    """Regret of the recommendation after the last trial finished within ``cost``."""
    regret = math.inf
    for c, r in zip(run["cumulative_cost"], run[key], strict=True):
        if c > cost * (1 + 1e-12):
            break
        regret = math.inf if r is None else r
    return regret


def _first_cost(grid: np.ndarray, curve: np.ndarray, level: float) -> float:
    hits = np.nonzero(curve <= level + 1e-12 * max(abs(level), 1.0))[0]
    return float(grid[hits[0]]) if hits.size else math.inf


def _percentile(values: Any, q: Any, axis: int | None = None) -> Any:
    """``np.percentile`` where ``inf`` (no recommendation yet) sorts last and stays ``inf``."""
    big = np.finfo(np.float64).max / 4
    out = np.percentile(np.minimum(np.asarray(values, dtype=np.float64), big), q, axis=axis)
    return np.where(out >= big, np.inf, out)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "-"


def report(runs: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = (0.25, 0.5, 1.0)
    groups = sorted(
        {(r["problem"], r["cost_model"]) for r in runs},
        key=lambda pc: (list(PROBLEMS).index(pc[0]) if pc[0] in PROBLEMS else 99, pc[1]),
    )
    problems = list(dict.fromkeys(p for p, _ in groups))
    costs = [c for c in COSTS if any(c == gc for _, gc in groups)]
    fig, axes = plt.subplots(
        len(problems),
        len(costs),
        figsize=(5 * len(costs), 3.6 * len(problems)),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_visible(False)
    summary: dict[str, Any] = {}
    for problem, cost_model in groups:
        group = [r for r in runs if r["problem"] == problem and r["cost_model"] == cost_model]
        methods = [m for m in METHODS if any(r["method"] == m for r in group)]
        methods += sorted({r["method"] for r in group} - set(methods))
        seed_sets = [{r["seed"] for r in group if r["method"] == m} for m in methods]
        seeds = sorted(set.intersection(*seed_sets))
        if not seeds:
            print(f"\n### {problem} / {cost_model}: no seed has every method; skipped\n")
            continue
        by_method: dict[str, list[dict[str, Any]]] = {}
        for m in methods:
            latest: dict[int, dict[str, Any]] = {}
            for r in group:
                if r["method"] == m and r["seed"] in seeds:
                    latest[r["seed"]] = r  # a rerun of a seed replaces the earlier line
            by_method[m] = [latest[s] for s in seeds]
        budget = float(np.median([r["budget_cost"] for r in group]))
        lowest = min(min(r["cost"]) for r in group)
        grid = np.geomspace(min(lowest, budget / 100), budget, 300)
        curves = {
            m: np.array([[regret_at(r, c) for c in grid] for r in rs])
            for m, rs in by_method.items()
        }
        medians = {m: _percentile(c, 50, axis=0) for m, c in curves.items()}
        key = f"{problem}/{cost_model}"
        entry: dict[str, Any] = {
            "problem": problem,
            "cost_model": cost_model,
            "seeds": seeds,
            "budget_cost": budget,
            "methods": {},
        }
        missing = {
            m: len(s) - len(seeds)
            for m, s in zip(methods, seed_sets, strict=True)
            if len(s) > len(seeds)
        }
        print(
            f"\n### {problem}, {cost_model} cost ({len(seeds)} complete seeds; budget "
            f"{budget:.0f} s = {by_method[methods[0]][0]['budget']:g} target evaluations)"
            + (f"; runs left out for missing peers: {missing}" if missing else "")
            + "\n"
        )
        print(
            "Regret of the recommendation at the target: median (25th-75th) [90th]\n\n"
            "| method | "
            + " | ".join(f"{int(f * 100)} % budget" for f in fractions)
            + " | best target obs @ 100 % | trials | method s / trial |"
        )
        print("|---|" + "---|" * (len(fractions) + 3))
        for m in methods:
            rs = by_method[m]
            cells, at = [], {}
            for f in fractions:
                values = np.array([regret_at(r, f * budget) for r in rs])
                q25, q50, q75, q90 = _percentile(values, [25, 50, 75, 90])
                at[str(f)] = {"p25": q25, "median": q50, "p75": q75, "p90": q90}
                cells.append(f"{_fmt(q50)} ({_fmt(q25)}-{_fmt(q75)}) [{_fmt(q90)}]")
            target_obs = float(np.median([regret_at(r, budget, "regret_target_obs") for r in rs]))
            n_trials = float(np.median([len(r["cost"]) for r in rs]))
            per_trial = float(np.median([r["sampler_seconds"] / len(r["cost"]) for r in rs]))
            entry["methods"][m] = {
                "regret_at_fraction": at,
                "regret_target_obs_final_median": target_obs,
                "trials": n_trials,
                "method_seconds_per_trial": per_trial,
                "wall_seconds_per_run": float(np.median([r["wall_seconds"] for r in rs])),
            }
            print(
                f"| {m} | "
                + " | ".join(cells)
                + f" | {_fmt(target_obs)} | {n_trials:.0f} | {per_trial:.2f} |"
            )
        troubles = {
            m: {k: sum(r.get(k, 0) for r in rs) for k in TROUBLES} for m, rs in by_method.items()
        }
        if any(any(t.values()) for t in troubles.values()):
            print(
                "\nSteps with a failed model fit (last hyperparameters kept) / a failed "
                "acquisition step (random point) / a failed recommendation (previous one kept), "
                "summed over the runs: "
                + ", ".join(
                    f"{m} " + " / ".join(str(t[k]) for k in TROUBLES)
                    for m, t in troubles.items()
                    if any(t.values())
                )
            )
        for m, t in troubles.items():
            entry["methods"][m].update(t)
        _report_cost_to_reach(entry, methods, grid, medians)
        _report_spending(entry, methods, by_method)
        _report_coverage(entry, methods, by_method)
        _report_rules(entry, methods, by_method, fractions)
        summary[key] = entry
        ax = axes[problems.index(problem)][costs.index(cost_model)]
        ax.set_visible(True)
        for m in methods:
            floor = 1e-9
            q25, q75 = _percentile(np.maximum(curves[m], floor), [25, 75], axis=0)
            color = plt.get_cmap("tab20")(
                (2 * METHODS.index(m) if m in METHODS else 2 * len(METHODS)) % 20
            )
            ax.plot(
                grid,
                np.maximum(medians[m], floor),
                label=m,
                color=color,
                linewidth=2.2 if m.startswith("isbo") else 1.2,
                linestyle="-" if m.startswith(("isbo", "botorch")) else "--",
            )
            ax.fill_between(grid, q25, q75, color=color, alpha=0.12)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # The curves are infinite before a method's first recommendation, which defeats
        # matplotlib's autoscaling (and so do percentiles across an infinite value): the limits
        # come from the finite, positive regrets of the runs themselves.
        shown = np.concatenate([curves[m].ravel() for m in methods])
        shown = shown[np.isfinite(shown) & (shown > 0)]
        if shown.size:
            top = float(shown.max())
            ax.set_ylim(max(float(shown.min()), top * 1e-6) / 2, top * 2)
        ax.set_xlabel("cumulative simulated cost (s)")
        ax.set_ylabel("target regret of recommendation")
        ax.set_title(f"{problem}, {cost_model} cost ({len(seeds)} seeds)")
        ax.legend(fontsize=7)
    _report_goals(summary)
    summary["extrapolation_coverage"] = extrapolation_coverage(runs)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "mf.png", dpi=110)
    (out_dir / "mf.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    print(f"\nWrote {out_dir / 'mf.png'} and {out_dir / 'mf.json'}")
    return summary


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    raise TypeError(type(x))


def _report_cost_to_reach(
    entry: dict[str, Any], methods: list[str], grid: np.ndarray, medians: dict[str, np.ndarray]
) -> None:
    isbo = [m for m in methods if m.startswith("isbo")]
    peers = [m for m in methods if not m.startswith("isbo")]
    if not isbo or not peers:
        return
    print(
        "\nCost for the median curve to first reach the peer's final median regret "
        "(ratio = ISBO's cost / the peer's own cost):\n"
    )
    print(
        "| peer | final median regret | peer cost | "
        + " | ".join(f"{m} cost | {m} / peer" for m in isbo)
        + " |"
    )
    print("|---|---|---|" + "---|---|" * len(isbo))
    entry["cost_to_reach"] = {}
    for peer in peers:
        level = float(medians[peer][-1])
        peer_cost = _first_cost(grid, medians[peer], level)
        row = [_fmt(level), _fmt(peer_cost)]
        item: dict[str, Any] = {"level": level, "peer_cost": peer_cost}
        for m in isbo:
            c = _first_cost(grid, medians[m], level)
            ratio = c / peer_cost if math.isfinite(c) and math.isfinite(peer_cost) else math.inf
            item[m] = {"cost": c, "fraction_of_peer_cost": ratio}
            row += [_fmt(c) if math.isfinite(c) else "not reached", _fmt(ratio)]
        entry["cost_to_reach"][peer] = item
        print(f"| {peer} | " + " | ".join(row) + " |")


def _level_index(run: dict[str, Any], s: float) -> int:
    return int(np.argmin([abs(s - g) for g in run["grid"]]))


def _report_spending(
    entry: dict[str, Any], methods: list[str], by_method: dict[str, list[dict[str, Any]]]
) -> None:
    first = by_method[methods[0]][0]
    grid = first["grid"]
    labels = [
        str(round(first["fidelity_high"] ** g)) + (" (target)" if g >= 1 else "") for g in grid
    ]
    print(
        f"\nWhere the cost went, by fidelity level (`{first.get('fidelity_name', 'n')}` value; "
        "% of trials / % of cost, pooled over seeds; ISBO: model-based trials per run):\n"
    )
    print("| method | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(grid))
    entry["spending"] = {}
    for m in methods:
        trials = np.zeros(len(grid))
        cost = np.zeros(len(grid))
        model = np.zeros(len(grid))
        rs = by_method[m]
        one_level = 0  # runs whose model-based trials all went to one level (collapse)
        for r in rs:
            model_levels = set()
            for s, c, phase in zip(r["fidelity_unit"], r["cost"], r["phase"], strict=True):
                k = _level_index(r, s)
                trials[k] += 1
                cost[k] += c
                model[k] += phase == "model"
                if phase == "model":
                    model_levels.add(k)
            one_level += len(model_levels) == 1
        tf, cf = trials / trials.sum(), cost / cost.sum()
        per_run = model / len(rs)
        cells = []
        for k in range(len(grid)):
            cell = f"{100 * tf[k]:.0f} / {100 * cf[k]:.0f}"
            if m.startswith("isbo"):
                cell += f"; {per_run[k]:.1f}"
            cells.append(cell)
        entry["spending"][m] = {
            "levels_s": grid,
            "trial_fraction": tf.tolist(),
            "cost_fraction": cf.tolist(),
            "model_trials_per_run": per_run.tolist(),
            "runs_with_one_model_level": one_level,
        }
        print(f"| {m} | " + " | ".join(cells) + " |")


def _report_coverage(
    entry: dict[str, Any], methods: list[str], by_method: dict[str, list[dict[str, Any]]]
) -> None:
    rows = []
    entry["coverage80"] = {}
    for m in methods:
        hits, n, z = 0, 0, []
        for r in by_method[m]:
            value, std, true = r["pred_value"][-1], r["pred_std"][-1], r["true_value"][-1]
            if value is None or std is None or std <= 0:
                continue
            n += 1
            hits += abs(true - value) <= Z80 * std
            z.append((true - value) / std)
        if m.startswith("isbo") or n:
            entry["coverage80"][m] = {
                "covered": hits,
                "n": n,
                "fraction": hits / n if n else None,
                "median_z": float(np.median(z)) if z else None,
            }
            rows.append(
                f"| {m} | {hits}/{n} | "
                + (f"{hits / n:.2f} | {np.median(z):+.2f} |" if n else "n/a | - |")
            )
    if rows:
        print(
            "\nCoverage of the final recommendation's 80 % interval (value +- 1.2816 std) for "
            "its true target value; z = (true - value) / std:\n"
        )
        print("| method | covered | fraction | median z |\n|---|---|---|---|")
        print("\n".join(rows))


def extrapolation_coverage(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Calibration of the recommendations that rest on cheaper fidelities alone.

    Over every recommendation of every run (each trial's, where the run logged
    ``pred_n_target``) with no target evaluation behind it and a finite ``std``: the share whose
    true target value lies in the 80 % interval ``value +- 1.2816 std`` and the share that
    missed by more than 4 standard deviations, per method. Printed as a table; returned by
    method.
    """
    result: dict[str, dict[str, Any]] = {}
    for method in sorted({r["method"] for r in runs}):
        z = [
            (true - value) / std
            for r in runs
            if r["method"] == method and "pred_n_target" in r
            for value, std, true, n in zip(
                r["pred_value"], r["pred_std"], r["true_value"], r["pred_n_target"], strict=True
            )
            if n == 0 and value is not None and std is not None and std > 0
        ]
        if z:
            a = np.abs(np.array(z))
            result[method] = {
                "n": len(z),
                "runs": sum(
                    1 for r in runs if r["method"] == method and 0 in r.get("pred_n_target", [])
                ),
                "coverage80": float(np.mean(a <= Z80)),
                "beyond_4_std": float(np.mean(a > 4.0)),
                "median_z": float(np.median(z)),
            }
    if result:
        print(
            "\nExtrapolated recommendations (no target evaluation behind them), every trial's: "
            f"coverage of the 80 % interval (goal {GOAL_COVERAGE[0]:.2f}-{GOAL_COVERAGE[1]:.2f}) "
            "and misses beyond 4 std (goal < 0.02):\n"
        )
        print("| method | recommendations | runs | coverage | beyond 4 std | median z |")
        print("|---|---|---|---|---|---|")
        for method, c in result.items():
            print(
                f"| {method} | {c['n']} | {c['runs']} | {c['coverage80']:.2f} | "
                f"{c['beyond_4_std']:.3f} | {c['median_z']:+.2f} |"
            )
    return result


GOAL_COST_FRACTION = 1.0 / 3.0  # reach each peer's final median in at most this share of its cost
GOAL_COVERAGE = (0.65, 0.95)  # the 80 % interval's coverage over runs


def goals(entry: dict[str, Any], method: str) -> dict[str, Any]:
    """The goals of issue 12 for one ISBO ``method`` on one problem and cost model.

    ``entry`` is one value of :func:`report`'s summary. A goal on the median or the 90th
    percentile is met when no peer (every method whose name does not start with ``isbo``) has
    a lower final value; ties count as met.
    """
    final = {m: e["regret_at_fraction"]["1.0"] for m, e in entry["methods"].items()}
    peers = [m for m in final if not m.startswith("isbo")]
    mine = final[method]
    best_median = min(peers, key=lambda m: final[m]["median"])
    best_p90 = min(peers, key=lambda m: final[m]["p90"])
    reach = entry.get("cost_to_reach", {})
    fractions = [reach[p][method]["fraction_of_peer_cost"] for p in peers if p in reach]
    coverage = entry.get("coverage80", {}).get(method, {})
    spending = entry["spending"][method]
    return {
        "median": mine["median"],
        "p90": mine["p90"],
        "best_peer_median": (best_median, final[best_median]["median"]),
        "best_peer_p90": (best_p90, final[best_p90]["p90"]),
        "best_median": mine["median"] <= final[best_median]["median"],
        "best_p90": mine["p90"] <= final[best_p90]["p90"],
        "peers_reached_in_a_third": sum(f <= GOAL_COST_FRACTION for f in fractions),
        "n_peers": len(peers),
        "coverage": coverage.get("fraction"),
        "coverage_met": coverage.get("fraction") is not None
        and GOAL_COVERAGE[0] <= coverage["fraction"] <= GOAL_COVERAGE[1],
        "runs_with_one_model_level": spending["runs_with_one_model_level"],
        "n_runs": len(entry["seeds"]),
    }


def _report_goals(summary: dict[str, Any]) -> None:
    """One line per problem, cost model and ISBO variant: the goals, met or not."""
    rows = []
    for key, entry in summary.items():
        for m in entry["methods"]:
            has_peers = any(not p.startswith("isbo") for p in entry["methods"])
            if not m.startswith("isbo") or not has_peers:
                continue
            g = goals(entry, m)
            entry.setdefault("goals", {})[m] = g
            yes = {True: "yes", False: "no"}
            coverage = "n/a" if g["coverage"] is None else f"{g['coverage']:.2f}"
            rows.append(
                f"| {key} | {m} | {_fmt(g['median'])} [{_fmt(g['p90'])}] | "
                f"{g['best_peer_median'][0]} {_fmt(g['best_peer_median'][1])} | "
                f"{g['best_peer_p90'][0]} {_fmt(g['best_peer_p90'][1])} | "
                f"{yes[g['best_median']]} / {yes[g['best_p90']]} | "
                f"{g['peers_reached_in_a_third']} of {g['n_peers']} | "
                f"{coverage} ({yes[g['coverage_met']]}) | "
                f"{g['runs_with_one_model_level']} of {g['n_runs']} |"
            )
    if rows:
        print(
            "\n### Goals at 100 % of the budget\n\n"
            "Final regret median [90th]; the best peer by each; whether ISBO has the best "
            "median / 90th percentile; how many peers' final median regret ISBO's median curve "
            "reaches within a third of the peer's cost; coverage of the 80 % interval (goal "
            "0.65-0.95); runs whose model-based trials all went to one fidelity level.\n"
        )
        print(
            "| problem/cost | method | final regret | best peer (median) | best peer (90th) | "
            "best median / 90th | peers reached in 1/3 cost | coverage | one-level runs |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


def _report_rules(
    entry: dict[str, Any],
    methods: list[str],
    by_method: dict[str, list[dict[str, Any]]],
    fractions: Sequence[float],
) -> None:
    """ISBO's regret under each recommendation rule of ``RULES``, on the same studies."""
    rows = []
    entry["rules"] = {}
    for m in methods:
        rs = by_method[m]
        if not rs or any("regret_rules" not in r for r in rs):
            continue
        entry["rules"][m] = {}
        names = [n for n in rs[0]["regret_rules"] if all(n in r["regret_rules"] for r in rs)]
        curves = {id(r): dict(r["regret_rules"]) for r in rs}
        if "supported" in names and all(len(r.get("rule", [])) == len(r["regret"]) for r in rs):
            # The default rule, except that a configuration never run at the target is not
            # recommended once one has been ("supported" wherever the checks said
            # "extrapolate"): the recommendation rule since 6c3b394, on studies run before it.
            names.append(NO_EXTRAPOLATION)
            for r in rs:
                curves[id(r)][NO_EXTRAPOLATION] = [
                    supported if rule == "extrapolate" else default
                    for default, supported, rule in zip(
                        r["regret"], r["regret_rules"]["supported"], r["rule"], strict=True
                    )
                ]
        for name in names:
            cells = []
            for fraction in fractions:
                values = []
                for r in rs:
                    curve = {
                        "cumulative_cost": r["cumulative_cost"],
                        "regret": curves[id(r)][name],
                    }
                    values.append(regret_at(curve, fraction * r["budget_cost"]))
                med, p90 = float(np.median(values)), float(_percentile(values, 90))
                entry["rules"][m].setdefault(name, {})[str(fraction)] = [med, p90]
                cells.append(f"{_fmt(med)} [{_fmt(p90)}]")
            rows.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
    if rows:
        print(
            "\nISBO's recommendation under each rule for configurations never run at the target "
            "(same studies): regret median [90th]\n"
        )
        header = " | ".join(f"{f:.0%} budget" for f in fractions)
        print(f"| method | rule | {header} |\n|---|---|" + "---|" * len(fractions))
        print("\n".join(rows))


# -- main ------------------------------------------------------------------------------------
def available_methods() -> list[str]:
    """Every method, less the optional ones whose package is not installed."""
    import importlib.util

    return [
        m
        for m in METHODS
        if m not in OPTIONAL_METHODS or importlib.util.find_spec(OPTIONAL_METHODS[m]) is not None
    ]


def _init_worker() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _task(task: tuple[str, str, str, int, float, int, int, float]) -> dict[str, Any]:
    name, cost_model, method, seed, budget, max_trials, every, noise = task
    return run_one(PROBLEMS[name], cost_model, method, seed, budget, max_trials, every, noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--costs", nargs="+", default=["affine", "steep"], choices=COSTS)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=available_methods(),
        choices=list(METHODS),
        help="default: every method whose package is installed",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--budget", type=float, default=30.0, help="cost budget in target-fidelity evaluations"
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=100_000,
        help="a safety cap only: the cost budget ends a run (earlier results used 100)",
    )
    parser.add_argument(
        "--recommend-every",
        type=int,
        default=1,
        help="model-based methods refresh their recommendation after every k-th trial",
    )
    parser.add_argument(
        "--noise-scale", type=float, default=1.0, help="scales the synthetic problems' noise"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (--jobs 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mf.jsonl"))
    parser.add_argument("--report", type=Path, nargs="+", help="summarize JSONL files and exit")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.report:
        report(load_runs(args.report), args.out_dir)
        return
    _init_worker()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tasks = [
        (
            name,
            cost_model,
            method,
            seed,
            args.budget,
            args.max_trials,
            args.recommend_every,
            args.noise_scale,
        )
        for seed in args.seeds
        for name in args.problems
        for cost_model in args.costs
        if has_cost(PROBLEMS[name], cost_model)
        for method in args.methods
        if refusal(PROBLEMS[name], method) is None
    ]
    for name in args.problems:
        for method in args.methods:
            reason = refusal(PROBLEMS[name], method)
            if reason is not None:
                print(f"skipped: {reason}", file=sys.stderr)

    def describe(run: dict[str, Any]) -> str:
        n = len(run["cost"])
        return (
            f"seed {run['seed']} {run['problem']:14s} {run['cost_model']:6s} "
            f"{run['method']:13s} trials {n:3d} final regret {run['regret'][-1]:.4g} "
            f"method {run['sampler_seconds'] / n:.2f} s/trial wall {run['wall_seconds']:.1f} s"
        )

    run_tasks(
        _task, tasks, jobs=args.jobs, out=args.out, describe=describe, initializer=_init_worker
    )


if __name__ == "__main__":
    main()
