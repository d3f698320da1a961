"""The sampler's GP fits, warm-started from one ``ask`` to the next, and their view at the target.

:class:`ModelFits` owns the three kinds of GP an ``ask`` or a recommendation fits: the objective
GP (the study's own, or the pre-trained prior adapted to the study), the GPs of the constraint
values, and the cost GP (:mod:`optuna_isbo.model`, :mod:`optuna_isbo.constraints`). Each fit
starts from the hyperparameters of the previous fit of its kind, which is all the state they
keep; a sampler restored in another process fits from scratch and gets the same model up to the
optimizer's tolerance.

:meth:`ModelFits.target_evidence` is what the fits say about every evaluated configuration at
the target fidelity: posterior means, standard deviations widened by the verifications' checks
(:mod:`optuna_isbo.decisions`), and with constraints the probability of feasibility. The
recommendation (:func:`optuna_isbo.decisions.choose_recommendation`) is chosen from it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

from optuna_isbo import constraints
from optuna_isbo import recommendation as rec
from optuna_isbo import trials as study_trials
from optuna_isbo.decisions import (
    ObjectiveFit,
    TargetEvidence,
    calibrated_std,
    calibration_checks,
    feasibility_of_configurations,
    model_inputs,
    target_posterior,
)
from optuna_isbo.meta import GPPrior
from optuna_isbo.model import (
    CostModel,
    GPParams,
    fit_cost_model,
    fit_gp,
    loo_log_density,
    standardize,
    tame_outliers,
)
from optuna_isbo.search_space import SearchSpace

#: Completed trials from which the study's own GP challenges a pre-trained prior. From 5 rather
#: than 10 (the startup design of a sampler without a prior), a prior that points the wrong way
#: (HPOBench with every axis reversed) was lower than ISBO without a prior on 15 of 30 seeds
#: at 50 trials instead of 8, while on the unreversed tasks the balance stayed (50 lower and 26
#: higher of 80, against 51 and 25; ``benchmarks/RESULTS.md``). With a fidelity the startup
#: design still takes 10 trials, so the challenge decides from its end on either way.
PRIOR_CHALLENGE_TRIALS = 5


class ModelFits:
    """The GP fits of one sampler, each warm-started from the previous fit of its kind.

    Parameters
    ----------
    prior
        A pre-trained GP prior (:class:`~optuna_isbo.meta.GPPrior`) for the objective, or
        ``None``.
    prior_refit_log_sd
        Width of the hyperprior under which the prior's outputscale and noise are refitted
        (:meth:`~optuna_isbo.meta.GPPrior.adapt`).
    """

    def __init__(self, prior: GPPrior | None, prior_refit_log_sd: float) -> None:
        self.prior = prior
        self.prior_refit_log_sd = prior_refit_log_sd
        self._warm_starts: dict[tuple[Any, ...], GPParams] = {}
        self._constraint_warm_starts: dict[tuple[Any, ...], dict[int, GPParams]] = {}

    def objective(
        self,
        study: Study,
        space: SearchSpace,
        completed: list[FrozenTrial],
        *,
        target_only: bool = False,
    ) -> ObjectiveFit:
        """The objective GP on ``completed``, or with ``target_only`` on its target trials.

        A target-only fit keeps the fidelity column (every row has ``s = 1``, where the
        fidelity term of the kernel vanishes), so its inputs have the usual shape; it falls
        back to all trials when fewer than two are at the target. With a prior, from
        :data:`PRIOR_CHALLENGE_TRIALS` trials on, the study's own GP is used where its
        leave-one-out log predictive density of the study's values is the higher.
        """
        X, s = space.encode_trials(completed)
        target_only = target_only and space.fidelity_param is not None
        if target_only:
            at_target = rec.is_target(s)
            if int(at_target.sum()) >= 2:
                completed = [
                    t for t, keep in zip(completed, at_target.tolist(), strict=True) if keep
                ]
                X, s = X[at_target], s[at_target]
            else:
                target_only = False
        inputs = model_inputs(space, X, s)
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        y = torch.tensor([sign * t.values[0] for t in completed], dtype=torch.float64)
        y = tame_outliers(y, torch.tensor([not study_trials.ran_in_full(t) for t in completed]))
        if self.prior is not None:
            self.prior.check_search_space(
                space.distributions, space.fidelity_param, target_fidelity=space.target_fidelity
            )
            model = self.prior.adapt(
                inputs, self.prior.transform(y), log_sd=self.prior_refit_log_sd
            )
            pretrained = ObjectiveFit(
                model, inputs, self.prior.y_shift, self.prior.y_scale, target_only
            )
            if y.shape[0] < PRIOR_CHALLENGE_TRIALS:
                return pretrained
            # The study's own GP takes over where it predicts the study's values better.
            own = self.own(space, inputs, y, target_only)
            if loo_log_density(own.model, own.scale) > loo_log_density(model, pretrained.scale):
                return own
            return pretrained
        return self.own(space, inputs, y, target_only)

    def own(
        self, space: SearchSpace, inputs: torch.Tensor, y: torch.Tensor, target_only: bool
    ) -> ObjectiveFit:
        """The objective GP fitted to the study's values ``y (n,)`` alone (MAP, warm-started)."""
        y_std, shift, scale = standardize(y)
        key = ("objective", inputs.shape[1], space.fidelity_param, target_only)
        model = fit_gp(
            inputs,
            y_std,
            has_fidelity=space.fidelity_param is not None,
            warm_start=self._warm_starts.get(key),
        )
        self._warm_starts[key] = model.params
        return ObjectiveFit(model, inputs, shift, scale, target_only)

    def constraints(
        self, space: SearchSpace, inputs: torch.Tensor, C: torch.Tensor
    ) -> constraints.ConstraintModel:
        """GPs of the constraint values ``C (n, k)`` over ``inputs (n, D)``, warm-started."""
        key = ("constraints", inputs.shape[1], space.fidelity_param, C.shape[1])
        warm = self._constraint_warm_starts.setdefault(key, {})
        return constraints.fit_constraint_model(
            inputs, C, has_fidelity=space.fidelity_param is not None, warm_starts=warm
        )

    def cost(
        self, space: SearchSpace, cost_seconds: torch.Tensor, inputs: torch.Tensor
    ) -> CostModel:
        """The GP of ``log cost_seconds (n,)`` over ``inputs (n, D)``, warm-started."""
        key = ("cost", inputs.shape[1], space.fidelity_param)
        model = fit_cost_model(inputs, cost_seconds, warm_start=self._warm_starts.get(key))
        self._warm_starts[key] = model.gp.params
        return model

    def target_evidence(
        self,
        study: Study,
        space: SearchSpace,
        completed: list[FrozenTrial],
        *,
        target_only: bool | None = None,
    ) -> TargetEvidence | None:
        """The model's view of every evaluated configuration at the target, or ``None``.

        ``None`` when the model rests on fewer than
        :data:`~optuna_isbo.recommendation.MIN_MODEL_OBSERVATIONS` trials (its predictive
        distribution has no variance to report) or fails (with a warning). ``target_only``
        fits the objective GP to the target-fidelity trials alone; by default it does so
        exactly when the checks overruled the model (rule ``"observed"``). The standard
        deviations are widened by :func:`~optuna_isbo.recommendation.small_sample_factor`
        (the output scale was fitted, not known), then by ``kappa`` after the checks, or
        before any check by :func:`~optuna_isbo.decisions.extrapolation_factor` where a
        configuration has no target evaluation; a target-only GP's are not widened by
        ``kappa`` (the factor measured the model that learned from the cheap trials).
        """
        X, s = space.encode_trials(completed)
        if space.fidelity_param is None:
            s = torch.ones(X.shape[0], dtype=torch.float64)
        configs = rec.group_configurations(X, s)
        if len(completed) < rec.MIN_MODEL_OBSERVATIONS:
            return None
        kappa, n_checks, rule = calibration_checks(completed, study)
        if target_only is None:
            target_only = rule == "observed"
        try:
            fit = self.objective(study, space, completed, target_only=target_only)
            mean, sd = target_posterior(fit, space, configs.X)
            feasibility = None
            keys = constraints.constraint_keys(completed)
            if keys:
                C = constraints.constraint_values(completed, keys)
                model = self.constraints(space, model_inputs(space, X, s), C)
                ones = torch.ones(configs.X.shape[0], dtype=torch.float64)
                p_model = model.probability(model_inputs(space, configs.X, ones))
                feasibility = feasibility_of_configurations(
                    configs,
                    s,
                    constraints.observed_feasible(C),
                    p_model.detach(),
                    known=~torch.isnan(C).any(dim=1),
                )
        except torch.linalg.LinAlgError as err:
            warnings.warn(
                f"ISBOSampler's model failed ({err}); `recommend` returns the best value "
                "observed at the highest fidelity instead.",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        if fit.model.X.shape[0] < rec.MIN_MODEL_OBSERVATIONS:
            return None
        sd = calibrated_std(fit, sd, configs.n_target, kappa, n_checks)
        return TargetEvidence(configs, mean, sd, kappa, n_checks, rule, feasibility)
