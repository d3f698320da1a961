"""``ISBOSampler``: the Optuna glue around the model, the acquisition and its optimizer.

The flow of one ``ask`` is

    trials --(search_space)--> X, s, y, cost --(model)--> objective GP, cost GP
           --(acquisition)--> information gain per second --(optim)--> (x, s) --> params

and this module only decides which trials count, when the model takes over from the startup
design, how running trials enter as pending points, and what is written to the trial.
"""

from __future__ import annotations

import datetime
import functools
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._base import (
    _INDEPENDENT_SAMPLING_WARNING_TEMPLATE,
    _process_constraints_after_trial,
)
from optuna.search_space import intersection_search_space
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo import mf_search, target_search
from optuna_isbo import recommendation as rec
from optuna_isbo import trials as study_trials
from optuna_isbo._device import on_cpu
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.decisions import (
    TARGET_PHASE,
    calibration_checks,
    choose_recommendation,
    mf_share,
    search_at_target,
    split_costs,
)
from optuna_isbo.fits import ModelFits
from optuna_isbo.meta import GPPrior
from optuna_isbo.recommendation import Recommendation
from optuna_isbo.search_space import (
    SearchSpace,
    left_joint_space_messages,
    missing_fidelity_message,
)
from optuna_isbo.startup import startup_fidelity
from optuna_isbo.trials import ATTR_PREFIX

# A child of Optuna's logger, so that ``optuna.logging.set_verbosity`` applies to it.
_logger = optuna.logging.get_logger("optuna." + __name__)

_ACQUISITIONS = ("es", "mes")
_LISTED_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED)
# A trial that has been inside its ``ask`` for longer than this was abandoned.
_MAX_ASK_SECONDS = 600.0


class ISBOSampler(BaseSampler):
    """Cost-aware multi-fidelity Bayesian optimization by entropy search per unit cost.

    Every trial gets hyperparameters ``x`` *and* a fidelity ``B`` (an ordinary parameter that the
    objective suggests, by default ``"super_batch_size"`` of :class:`~optuna_isbo.ISSGD`). A GP
    over ``(x, s)``, ``s`` the normalized log fidelity, models the objective; a second GP models
    the log cost in seconds. The next trial maximizes the information gained about the optimum at
    the target fidelity per second of expected cost. See the README and the modules
    :mod:`~optuna_isbo.model`, :mod:`~optuna_isbo.acquisition` and :mod:`~optuna_isbo.optim`.

    Parameters
    ----------
    fidelity_param
        Name of the fidelity parameter (int or float, log or linear, positive). When ``None`` or
        absent from the study, the sampler is cost-aware entropy-search BO over ``x`` alone.
        A name that no completed trial has, while they have numeric parameters, is reported
        once with a ``UserWarning`` that lists them (a misspelt name).
    target_fidelity
        The fidelity the optimization is about; defaults to the parameter's upper bound.
    cost_attr
        User attribute holding a trial's cost in seconds (written by
        :meth:`ISSGD.report <optuna_isbo.ISSGD.report>`). A trial costs the larger of this
        attribute and its duration (:func:`optuna_isbo.cost.trial_cost_seconds`).
    acquisition
        ``"mes"`` (multi-fidelity max-value entropy search, the default) or ``"es"`` (entropy
        search about the minimizer, several times dearer per ``ask``). ``"mes"`` had the lower
        median and 90th-percentile regret on every problem where both ran
        (``benchmarks/RESULTS.md``), and its gain is differentiable, so its best candidates are
        refined by L-BFGS-B (:func:`optuna_isbo.optim.refine_continuous`).
    n_startup_trials
        Completed trials taken from a scrambled Sobol design before the model is used. The
        design spreads ``x`` uniformly and the fidelity as ``s = u^2`` (``u`` uniform), rounded
        to the fidelity grid: most startup trials are cheap, about a quarter are at
        ``s > 0.56``, so the model sees how fidelities relate. Once two fidelities have
        completed trials, a startup trial whose cheaper fidelity would not pay for its cost
        (a cheapest run dearer than about half a target run) runs at the target instead
        (:mod:`optuna_isbo.startup`). Defaults to 10, or to 1 with a ``prior`` without a
        fidelity (the pre-trained prior already says where good configurations are, so the
        model is used from the second trial on). A prior with a fidelity keeps the 10: it
        speaks of the objective, not of the cost, and the cost model learns from the startup
        design's cheap runs which configurations are dear (on LCBench, with one startup trial
        the prior's first proposals cost up to a whole budget; ``benchmarks/RESULTS.md``).
    consider_running_trials
        Condition the model on running trials at their predicted values (kriging believer), so
        that parallel workers do not pick the same point.
    independent_sampler
        Sampler for parameters outside the joint search space (dynamic ones). Defaults to
        :class:`~optuna.samplers.RandomSampler`.
    seed
        Seed for the startup design and the randomness of each ``ask``.
    n_fidelities
        Largest number of fidelity levels considered (all of them when the distribution has
        fewer).
    warn_independent_sampling
        Warn when a parameter falls back to ``independent_sampler`` after startup.
    prior
        A GP prior pre-trained on related studies (:func:`optuna_isbo.meta.fit_prior`). The
        objective GP then uses the prior's mean function, lengthscales and fidelity
        hyperparameters as they are, on the study's values in the prior's units
        (:meth:`~optuna_isbo.meta.GPPrior.transform`); its outputscale and noise variance are
        refitted to the study under a hyperprior centred on the pre-trained values (see
        ``prior_refit_log_sd``). The study's search space and fidelity parameter must match the
        prior's, else :class:`ValueError` names the difference. The cost GP is fitted as usual.
        From :data:`~optuna_isbo.fits.PRIOR_CHALLENGE_TRIALS` (5) completed trials on, a GP
        fitted to the study alone challenges it at every fit, and the one with the higher
        leave-one-out log predictive density of the study's values is used
        (:func:`~optuna_isbo.model.loo_log_density`): a prior that does not describe the new
        task gives way to the study's own data.
    prior_refit_log_sd
        Width, in natural-log units, of the hyperprior under which the outputscale and noise
        variance of ``prior`` are refitted to the study at each trial
        (:meth:`~optuna_isbo.meta.GPPrior.adapt`). 0 holds every pre-trained hyperparameter
        fixed, as HyperBO does. Unused without a prior.
    verify_cost_fraction
        Share ``rho`` of the cost that verification trials may take. When the configuration
        with the best posterior mean at the target has not been evaluated there, and the
        verification trials so far have cost less than ``rho`` of the cost spent, the next
        trial evaluates that configuration at the target (``isbo:phase`` is ``"verify"``).
        Target evaluations of the leading configuration are what :meth:`recommendation` rests
        on and what reveals a misleading cheap fidelity; ``rho`` bounds what they take from the
        exploration. Target trials that the acquisition chose do not count against ``rho``:
        they test other configurations, and a study that spends most of its cost at the target
        on them would otherwise never check the one it recommends. 0 turns verification off.
        Unused without a fidelity.
    mf_cost_fraction
        Share of the cost that the multi-fidelity search (the startup design, its
        model-chosen trials and its verifications) may take until its verifications have
        tested it; while they pass, the share grows towards 0.8 (towards 1 for
        ``mf_cost_fraction=1``), and once they fail it is 0
        (:func:`optuna_isbo.decisions.mf_share`). The target search, Optuna's
        ``GPSampler`` on the trials evaluated at the target (:mod:`optuna_isbo.target_search`),
        its log EI charged for runs dearer than the typical target run
        (:mod:`optuna_isbo.target_cost`), proposes every other trial (``isbo:phase`` is
        ``"target"``). The target search is therefore never starved: until verifications
        vouch for the cheap runs the study is at worst that search at ``1 - rho`` of the
        budget, afterwards at no less than a fifth of
        it, and the target evaluations that the multi-fidelity search buys feed it too
        (:mod:`optuna_isbo.decisions`). 1 lets the multi-fidelity search decide every trial,
        0 leaves it the startup design only. Unused without a fidelity (the search is then the
        target search alone) and with a ``prior`` (the multi-fidelity search, which uses it,
        then decides every trial).

    Raises
    ------
    TypeError
        If an argument is not of its type, named in the message: a flag that is not a
        ``bool`` (``"no"`` is refused, not read as true; NumPy bools are accepted), a number
        that is not an ``int`` or ``float`` (or a bool where a number is due), an
        ``independent_sampler`` that is not an Optuna sampler instance, a ``prior`` that is
        not a :class:`~optuna_isbo.meta.GPPrior`, or a ``constraints_func`` that is not
        callable.
    ValueError
        If a number is outside its range, or ``acquisition`` is not ``"es"`` or ``"mes"``.

    Notes
    -----
    - Without a fidelity parameter (``fidelity_param=None``, a fidelity the objective pins, or
      one it never suggests), and without a ``prior``, the sampler is Optuna's ``GPSampler``
      seeded with ``seed``: the same proposals, its constraint handling
      (``trial.set_constraint``) included, except that failed configurations (below) leave a
      mark instead of being forgotten and outlying values are tamed
      (:func:`optuna_isbo.model.tame_outliers`).
    - Only ``COMPLETE`` trials with a finite value are data; infinite values are ignored with
      a warning. Failed and pruned trials, trials completed at an infinite value and trials
      that returned before suggesting the fidelity leave a mark, so that the next proposals
      move away from them: the target search sees them at the worst value observed so far,
      the multi-fidelity search as pending points that never resolve. Report a training run that
      diverged as a completed trial at the worst value with the user attribute
      ``isbo:diverged`` set to ``True``: the objective model then learns that the region is
      bad, and the cost model leaves out its truncated cost.
    - The sampler keeps no state that a second process lacks: the startup design is indexed by
      trial number, the randomness of an ``ask`` is seeded by ``(seed, trial number)``, and the
      parameters chosen for a running trial are stored in the trial's system attributes so that
      other workers treat it as pending. Only warm starts of the GP fits live in memory.
    - For each trial the sampler writes user attributes prefixed ``isbo:``: ``isbo:phase``
      (``startup``, ``model``, ``verify``, ``target`` or ``fallback``), ``isbo:fidelity``, and
      for ``model`` and ``verify`` trials ``isbo:predicted_cost_seconds``,
      ``isbo:predicted_value_at_target`` with ``isbo:predicted_std_at_target``, and for
      ``model`` trials ``isbo:information_gain_nats``, ``isbo:acquisition_value`` (nats per
      second), ``isbo:calibration_factor`` and ``isbo:n_target_checks``.
    - The model is checked against the target: every verification trial compares the
      prediction made before it ran with what was observed
      (:func:`optuna_isbo.recommendation.calibration_factor`). When at least two predictions
      missed by more than twice their stated standard deviation (root mean square), the cheaper
      fidelities misled the model: the target search then proposes every trial (until further
      verifications bring the factor back), and :meth:`recommendation` picks the configuration
      with the best observed target value, reported with the posterior mean and standard
      deviation of a GP fitted to the target trials alone
      (:func:`optuna_isbo.recommendation.recommendation_rule`).
    - A trial's cost is :func:`optuna_isbo.cost.trial_cost_seconds`: the larger of
      ``cost_attr`` and the trial's duration, which includes the sampler's own time. Where
      durations decide the cost, the sampler's choices depend on measured times, so a rerun
      with the same seed can differ; with a ``cost_attr`` above the durations (a simulated
      cost, say) it repeats exactly.
    - Multi-objective studies are not supported.
    """

    def __init__(
        self,
        *,
        fidelity_param: str | None = "super_batch_size",
        target_fidelity: float | None = None,
        cost_attr: str = "isbo:cost",
        acquisition: str = "mes",
        n_startup_trials: int | None = None,
        consider_running_trials: bool = True,
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
        n_fidelities: int = 5,
        warn_independent_sampling: bool = True,
        prior: GPPrior | None = None,
        prior_refit_log_sd: float = 1.0,
        verify_cost_fraction: float = 0.25,
        mf_cost_fraction: float = 0.5,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
    ) -> None:
        if prior is not None and not isinstance(prior, GPPrior):
            raise TypeError(
                "`prior` must be a GPPrior (optuna_isbo.meta.fit_prior, GPPrior.load) or None, "
                f"got {type(prior).__name__}."
            )
        if independent_sampler is not None and not isinstance(independent_sampler, BaseSampler):
            raise TypeError(
                "`independent_sampler` must be an optuna BaseSampler instance (such as "
                "optuna.samplers.RandomSampler(seed=0)) or None, got "
                f"{_describe(independent_sampler)}."
            )
        if constraints_func is not None and not callable(constraints_func):
            raise TypeError(
                "`constraints_func` must be callable (a function of the finished trial) or None, "
                f"got {_describe(constraints_func)}."
            )
        _check_types(
            consider_running_trials=(consider_running_trials, bool),
            warn_independent_sampling=(warn_independent_sampling, bool),
            fidelity_param=(fidelity_param, (str, type(None))),
            cost_attr=(cost_attr, str),
            n_startup_trials=(n_startup_trials, (int, type(None))),
            n_fidelities=(n_fidelities, int),
            seed=(seed, (int, type(None))),
            target_fidelity=(target_fidelity, (int, float, type(None))),
            verify_cost_fraction=(verify_cost_fraction, (int, float)),
            mf_cost_fraction=(mf_cost_fraction, (int, float)),
            prior_refit_log_sd=(prior_refit_log_sd, (int, float)),
        )
        if n_startup_trials is None:
            n_startup_trials = 10 if prior is None or prior.has_fidelity else 1
        if not (math.isfinite(prior_refit_log_sd) and prior_refit_log_sd >= 0):
            raise ValueError(
                f"`prior_refit_log_sd` must be finite and >= 0, got {prior_refit_log_sd}."
            )
        if acquisition not in _ACQUISITIONS:
            raise ValueError(f"`acquisition` must be one of {_ACQUISITIONS}, got {acquisition!r}.")
        if n_startup_trials < 0:
            raise ValueError(f"`n_startup_trials` must be >= 0, got {n_startup_trials}.")
        if not (math.isfinite(verify_cost_fraction) and 0.0 <= verify_cost_fraction <= 1.0):
            raise ValueError(
                f"`verify_cost_fraction` must be in [0, 1], got {verify_cost_fraction}."
            )
        if not (math.isfinite(mf_cost_fraction) and 0.0 <= mf_cost_fraction <= 1.0):
            raise ValueError(f"`mf_cost_fraction` must be in [0, 1], got {mf_cost_fraction}.")
        if n_fidelities < 1:
            raise ValueError(f"`n_fidelities` must be >= 1, got {n_fidelities}.")
        if target_fidelity is not None and not (
            math.isfinite(target_fidelity) and target_fidelity > 0
        ):
            raise ValueError(f"`target_fidelity` must be positive, got {target_fidelity}.")
        self._fidelity_param = fidelity_param
        self._target_fidelity = target_fidelity
        self._cost_attr = cost_attr
        self._acquisition = acquisition
        self._n_startup_trials = n_startup_trials
        self._consider_running_trials = bool(consider_running_trials)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._n_fidelities = n_fidelities
        self._warn_independent_sampling = bool(warn_independent_sampling)
        self._verify_cost_fraction = verify_cost_fraction
        self._mf_cost_fraction = mf_cost_fraction
        # The target search's startup count: observations at the target before its GP is used
        # (failed configurations, which its view lists at the worst value, do not count).
        self._target_startup = max(n_startup_trials, 1)
        # With a fidelity its acquisition is charged for dear target runs, as the
        # multi-fidelity search weighs cost (:mod:`optuna_isbo.target_cost`).
        self._target = target_search.make_target_sampler(
            seed,
            self._independent_sampler,
            self._target_startup,
            functools.partial(trial_cost_seconds, cost_attr=cost_attr),
        )
        self._lock = threading.Lock()
        self._fits = ModelFits(prior, prior_refit_log_sd)
        # Trials whose cost the split capped (:func:`split_costs`), each reported once.
        self._costs_capped: set[int] = set()
        # Trials reported as missing a constraint value (:class:`target_search.TargetView`).
        self._warned_missing_constraints: set[int] = set()
        self._constraints_func = constraints_func
        # What was reported once (``_joint_search_space``): the fidelity parameter missing from
        # every completed trial, and parameters that left the joint search space.
        self._warned_missing_fidelity = False
        self._warned_left_joint_space: set[str] = set()

    # The lock cannot be pickled or deep-copied; a restored sampler gets a fresh one. The warm
    # starts travel with it (they only speed up the next fit).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_costs_capped", set())
        self.__dict__.setdefault("_warned_missing_constraints", set())
        if "_fits" not in self.__dict__:  # pickled before the fits had their own owner
            self._fits = ModelFits(state.get("_prior"), state.get("_prior_refit_log_sd", 1.0))
        self._lock = threading.Lock()

    # -- Optuna hooks ----------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._target.reseed_rng()  # reseeds the shared independent sampler too

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._joint_search_space(study)

    def _joint_search_space(self, study: Study) -> dict[str, BaseDistribution]:
        """Intersection of the completed trials' spaces, over the trials that have a fidelity.

        A completed trial that never suggested the fidelity (an objective that returned early)
        is not an evaluation at any fidelity; were it counted, the fidelity would drop out of
        the intersection and with it the fidelity axis of every later trial.

        Two things the user may not have meant are reported once, with a ``UserWarning``: a
        ``fidelity_param`` that no completed trial has while they have numeric parameters (a
        misspelt name turns the sampler into ``GPSampler``), and a parameter that completed
        trials have but the intersection leaves out (its distribution changed, or some trials
        lack it), which the model then ignores.
        """
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if self._fidelity_param is not None:
            with_fidelity = [t for t in trials if self._fidelity_param in t.params]
            if not with_fidelity and trials and not self._warned_missing_fidelity:
                message = missing_fidelity_message(self._fidelity_param, trials)
                if message is not None:
                    self._warned_missing_fidelity = True
                    warnings.warn(message, UserWarning, stacklevel=3)
            trials = with_fidelity or trials
            ranges = {t.distributions[self._fidelity_param] for t in with_fidelity}
            if len(ranges) > 1:
                raise ValueError(
                    f"The fidelity parameter {self._fidelity_param!r} changed its distribution "
                    f"during the study ({', '.join(sorted(map(str, ranges)))}). ISBOSampler "
                    "models one fidelity range per study, whose upper end is the target: keep "
                    "the range, or start a new study for the new one."
                )
        joint = {
            name: dist
            for name, dist in intersection_search_space(trials).items()
            if not dist.single()
        }
        proposer = type(self._independent_sampler).__name__
        for name, message in left_joint_space_messages(
            trials, joint, self._warned_left_joint_space, proposer
        ):
            self._warned_left_joint_space.add(name)
            warnings.warn(message, UserWarning, stacklevel=3)
        return joint

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        if not search_space:
            return {}
        space = SearchSpace(search_space, self._fidelity_param, self._target_fidelity)
        if self._fits.prior is not None:
            self._fits.prior.check_search_space(
                search_space, space.fidelity_param, target_fidelity=space.target_fidelity
            )
        trials = study._get_trials(deepcopy=False, states=_LISTED_STATES, use_cache=False)
        completed = study_trials.usable_completed_trials(trials, search_space)
        marks = study_trials.failed_configurations(trials, search_space, space.fidelity_param)
        if space.fidelity_param is None and self._fits.prior is None:
            # No fidelity: the search is the target search, Optuna's GPSampler (an empty result
            # during its startup sends every parameter to ``sample_independent``).
            if len(completed) < self._target_startup:
                return {}
            usable = {t.number for t in completed}
            view = target_search.TargetView(
                study,
                lambda t: t.number in usable,
                marks,
                study_trials.tamed_values(
                    completed, study, min_squeeze=target_search.OUTLIER_MIN_SQUEEZE
                ),
                self._warned_missing_constraints,
            )
            with self._lock:
                params = target_search.sample_at_target(self._target, view, trial, search_space)
            if params:
                enqueued = bool(trial.system_attrs.get("fixed_params"))
                study_trials.write_attrs(
                    study, trial, {"phase": "enqueued" if enqueued else TARGET_PHASE}, params
                )
            return params
        attrs: dict[str, Any]
        kappa, n_checks, rule = calibration_checks(completed, study)
        if len(completed) < max(self._n_startup_trials, 1):
            params = self._startup_params(space, trial.number, completed)
            attrs = {"phase": "startup"}
        elif self._target_turn(study, space, completed, n_checks, rule):
            # Promotions only once the checks have failed (rule "observed"): the multi-fidelity
            # search then stops, and the cheap runs' ranks are all that is left of them. While
            # it runs, its verifications promote the model's best guesses, and the target
            # search's start stays space-filling, as GPSampler's (promoting then as well cost
            # regret on 9 of 11 bench_mf pairs; benchmarks/RESULTS.md).
            may_promote = rule == "observed" and not _earlier_trial_deciding(
                trials, trial, search_space
            )
            with self._lock:
                params, attrs = target_search.propose(
                    self._target,
                    study,
                    trial,
                    space,
                    search_space,
                    completed,
                    marks,
                    trials,
                    n_startup_trials=self._target_startup,
                    sobol_seed=(self._seed + 2) % (2**31),
                    may_promote=may_promote,
                    warned=self._warned_missing_constraints,
                )
        else:
            running = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.number != trial.number
                and search_space.keys() <= study_trials.pending_params(t).keys()
            ]
            earlier_deciding = _earlier_trial_deciding(trials, trial, search_space)
            pending_marks = [p for t in marks for p in study_trials.mark_params(t, space)]
            try:
                with self._lock, on_cpu():
                    params, attrs = mf_search.model_trial(
                        self._fits,
                        study,
                        space,
                        completed,
                        [study_trials.pending_params(t) for t in running],
                        pending_marks,
                        cost_attr=self._cost_attr,
                        verify_cost_fraction=self._verify_cost_fraction,
                        acquisition=self._acquisition,
                        n_fidelities=self._n_fidelities,
                        consider_running_trials=self._consider_running_trials,
                        ask_seed=_ask_seed(self._seed, trial.number),
                        kappa=kappa,
                        n_checks=n_checks,
                        may_verify=not earlier_deciding,
                    )
            except torch.linalg.LinAlgError as err:
                warnings.warn(
                    f"ISBOSampler's model failed ({err}); trial {trial.number} uses the "
                    "startup design instead.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                params = self._startup_params(space, trial.number, completed)
                attrs = {"phase": "fallback"}
        fixed = trial.system_attrs.get("fixed_params") or {}
        if fixed.keys() & params.keys():
            # ``enqueue_trial`` fixed some parameters: the trial runs those, not the proposal,
            # so it is labelled for what it runs and never counts as a verification.
            params = {**params, **{k: v for k, v in fixed.items() if k in params}}
            attrs = {"phase": "enqueued"}
        if space.fidelity_param is not None:
            attrs["fidelity"] = params[space.fidelity_param]
        study_trials.write_attrs(study, trial, attrs, params)
        return params

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        completed = study_trials.finite_completed_trials(study)
        in_startup = len(completed) < max(self._n_startup_trials, 1)
        if in_startup and param_name == self._fidelity_param and not param_distribution.single():
            # The very first trials have no joint search space yet; keep them cheap too.
            space = SearchSpace(
                {param_name: param_distribution}, self._fidelity_param, self._target_fidelity
            )
            if space.fidelity_param is not None:
                s = self._startup_fidelity(space, trial.number, completed)
                value = space.unit_to_fidelity(s)
                study._storage.set_trial_user_attr(
                    trial._trial_id, ATTR_PREFIX + "fidelity", value
                )
                return value
        if self._warn_independent_sampling and not in_startup:
            _logger.warning(
                _INDEPENDENT_SAMPLING_WARNING_TEMPLATE.format(
                    param_name=param_name,
                    trial_number=trial.number,
                    independent_sampler_name=type(self._independent_sampler).__name__,
                    sampler_name=type(self).__name__,
                    fallback_reason="dynamic search space is not supported by ISBOSampler",
                )
            )
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        phase = None
        fixed = trial.system_attrs.get("fixed_params")
        if fixed:
            # ``enqueue_trial``: the user chose (some of) what it runs. A trial whose every
            # parameter is fixed never reaches ``sample_relative``, so it is labelled here,
            # with its fidelity when that is fixed, as the sampler labels the trials it samples.
            phase = "enqueued"
            if self._fidelity_param is not None and self._fidelity_param in fixed:
                study._storage.set_trial_user_attr(
                    trial._trial_id, ATTR_PREFIX + "fidelity", fixed[self._fidelity_param]
                )
        elif len(study_trials.finite_completed_trials(study)) < max(self._n_startup_trials, 1):
            # Also marks the trials sampled before a joint search space exists.
            phase = "startup"
        if phase is not None:
            study._storage.set_trial_user_attr(trial._trial_id, ATTR_PREFIX + "phase", phase)
        self._independent_sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self._constraints_func is not None:
            _process_constraints_after_trial(self._constraints_func, study, trial, state)
        self._independent_sampler.after_trial(study, trial, state, values)

    # -- recommendation --------------------------------------------------------------------
    def recommend(self, study: Study) -> dict[str, Any]:
        """The configuration to retrain: the parameters of :meth:`recommendation`.

        Retrain it with, e.g., ``objective(optuna.trial.FixedTrial(sampler.recommend(study)))``.

        Parameters
        ----------
        study
            A single-objective study with at least one completed trial.

        Returns
        -------
        dict
            Parameter name to value, the fidelity parameter set to its target.
        """
        return self.recommendation(study).params

    def recommendation(self, study: Study) -> Recommendation:
        """The configuration to retrain, with its predicted value at the target fidelity.

        Among the configurations evaluated at the target fidelity (all evaluated configurations
        while none is), the one whose 80% posterior interval at the target has the lowest upper
        end (the highest lower end when maximizing; see :mod:`optuna_isbo.recommendation`). A
        configuration that looked good at cheap fidelities only is not recommended on that
        evidence: the sampler evaluates the configuration it believes best at the target as the
        study goes on (``verify_cost_fraction``), and that evaluation makes it a candidate.

        The result is also written to the study's user attributes, for the dashboard: a line
        to read, ``isbo:recommendation`` (:meth:`Recommendation.summary`), and
        ``isbo:recommended_trial``, ``isbo:recommended_value``, ``isbo:recommended_value_std``
        and ``isbo:recommended_n_target_evaluations``.

        Parameters
        ----------
        study
            A single-objective study with at least one completed trial.

        Returns
        -------
        Recommendation
            Parameters, predicted value and standard deviation (study units and direction),
            the trial it comes from and its number of target-fidelity evaluations.

        Raises
        ------
        ValueError
            If the study has no completed trial with a finite value.
        """
        self._raise_error_if_multi_objective(study)
        space, completed = self._recommendation_data(study)
        with self._lock, on_cpu():
            result = self._recommendation(study, space, completed)
        attrs = {
            "recommendation": result.summary(),
            "recommended_trial": result.trial_number,
            "recommended_value": result.value,
            "recommended_value_std": result.std if math.isfinite(result.std) else None,
            "recommended_n_target_evaluations": result.n_target_evaluations,
            "recommended_feasibility_probability": result.feasibility_probability,
        }
        try:
            for key, attr in attrs.items():
                study._storage.set_study_user_attr(study._study_id, ATTR_PREFIX + key, attr)
        except Exception as err:  # a read-only storage: the recommendation needs no write
            warnings.warn(
                f"The recommendation could not be written to the study's user attributes "
                f"({type(err).__name__}: {err}); it is returned all the same.",
                RuntimeWarning,
                stacklevel=2,
            )
        return result

    def _recommendation_data(self, study: Study) -> tuple[SearchSpace, list[FrozenTrial]]:
        """The joint search space and the completed trials a recommendation is made from."""
        search_space = self._joint_search_space(study)
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        completed = study_trials.usable_completed_trials(trials, search_space)
        if not completed:
            raise ValueError("`recommend` needs at least one completed trial with a finite value.")
        return SearchSpace(search_space, self._fidelity_param, self._target_fidelity), completed

    def _recommendation(
        self,
        study: Study,
        space: SearchSpace,
        completed: list[FrozenTrial],
    ) -> Recommendation:
        completed = study_trials.runs_up_to_target(completed, space)
        evidence = self._fits.target_evidence(study, space, completed)
        rule = None if evidence is None else evidence.rule
        return choose_recommendation(study, space, completed, evidence, rule)

    # -- internals -------------------------------------------------------------------------
    def _startup_fidelity(
        self, space: SearchSpace, trial_number: int, completed: Sequence[FrozenTrial]
    ) -> float:
        """The startup design's unit fidelity (:func:`optuna_isbo.startup.startup_fidelity`)."""
        assert space.fidelity_param is not None
        name = space.fidelity_param
        observed = [
            (space.fidelity_to_unit(t.params[name]), trial_cost_seconds(t, self._cost_attr))
            for t in completed
            if name in t.params and study_trials.ran_in_full(t)
        ]
        with on_cpu():
            engine = torch.quasirandom.SobolEngine(1, scramble=True, seed=self._seed + 1)
            u = float(engine.draw(trial_number + 1, dtype=torch.float64)[-1, 0])
            grid = space.fidelity_grid(self._n_fidelities)
            return startup_fidelity(grid, u, observed)

    def _startup_params(
        self, space: SearchSpace, trial_number: int, completed: Sequence[FrozenTrial]
    ) -> dict[str, Any]:
        with on_cpu():
            x = space.sample_sobol(trial_number + 1, seed=self._seed)[-1]
        s = self._startup_fidelity(space, trial_number, completed) if space.fidelity_param else 1.0
        return space.decode(x, s)

    def _target_turn(
        self,
        study: Study,
        space: SearchSpace,
        completed: list[FrozenTrial],
        n_checks: int,
        rule: rec.Rule,
    ) -> bool:
        """Whether the target search proposes the next trial (:func:`search_at_target`).

        Never with a ``prior``: the pre-trained GP is the multi-fidelity search's.
        """
        if self._fits.prior is not None:
            return False
        costs = [trial_cost_seconds(t, self._cost_attr) for t in completed]
        with on_cpu():
            _, s = space.encode_trials(completed)
            at_target = rec.is_target(s).tolist()
            self._report_capped_costs(completed, costs, at_target)
            return search_at_target(
                [t.user_attrs.get(ATTR_PREFIX + "phase") for t in completed],
                costs,
                mf_share(rule, n_checks, self._mf_cost_fraction),
                at_target,
            )

    def _report_capped_costs(
        self, completed: list[FrozenTrial], costs: list[float], at_target: list[bool]
    ) -> None:
        """Warn, once per trial, of a cheap run whose charge :func:`split_costs` capped."""
        charged = split_costs(costs, at_target).tolist()
        for t, cost, charge, target in zip(completed, costs, charged, at_target, strict=True):
            if charge < cost and not target and t.number not in self._costs_capped:
                self._costs_capped.add(t.number)
                warnings.warn(
                    f"Trial {t.number} cost {cost:.4g} s below the target fidelity, more "
                    f"than any run at the target ({charge:.4g} s): the split of the cost "
                    "between the multi-fidelity and the target search charges it "
                    f"{charge:.4g} s.",
                    RuntimeWarning,
                    stacklevel=4,
                )


def _earlier_trial_deciding(
    trials: list[FrozenTrial], trial: FrozenTrial, search_space: dict[str, BaseDistribution]
) -> bool:
    """Whether an earlier trial is still inside its own ``ask`` (another worker).

    It has not said what it evaluates; it may be verifying or promoting the same
    configuration, so this one defers. A trial that has been "deciding" for longer than any
    ``ask`` takes was abandoned (a worker killed during ``ask``, an ask-and-tell trial never
    told) and is ignored.
    """
    now = datetime.datetime.now()
    return any(
        t.state == TrialState.RUNNING
        and t.number < trial.number
        and not search_space.keys() <= study_trials.pending_params(t).keys()
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() < _MAX_ASK_SECONDS
        for t in trials
    )


def _ask_seed(seed: int, trial_number: int) -> int:
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def _check_types(**arguments: tuple[Any, type | tuple[type, ...]]) -> None:
    """Raise ``TypeError`` naming the first argument whose value is not of its types.

    NumPy integers, floats and bools count as ``int``, ``float`` and ``bool``. A ``bool`` is
    not a number here, and only a ``bool`` is a ``bool``: ``"no"`` or ``0`` for a flag is
    refused, not read as its truth value.
    """
    for name, (value, types) in arguments.items():
        allowed = types if isinstance(types, tuple) else (types,)
        if isinstance(value, np.bool_):
            value = bool(value)
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise TypeError(f"`{name}` must be {expected}, got {_describe(value)}.")


def _describe(value: object) -> str:
    """``value`` for an error message: its repr, with its type where the repr hides it."""
    text = repr(value)
    if len(text) > 60:
        text = f"{text[:45]}...{text[-12:]}"
    if isinstance(value, type):
        return f"the class {value.__name__} (an instance is needed)"
    return f"{text} ({type(value).__name__})"
