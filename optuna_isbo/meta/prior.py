"""The pre-trained GP prior in use: its units, its GP conditioned on a study, its checks.

:class:`GPPrior` is a :class:`~optuna_isbo.meta.prior_file.PriorRecord` (the fields and their
file format) with what :class:`~optuna_isbo.ISBOSampler` does with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from optuna.distributions import BaseDistribution

from optuna_isbo.meta.likelihood import _neg_log_ml
from optuna_isbo.meta.prior_file import PriorRecord
from optuna_isbo.meta.studies import _space_differences
from optuna_isbo.model import (
    _LOG_NOISE_BOUNDS,
    _LOG_OUTPUTSCALE_BOUNDS,
    GPModel,
    condition,
    minimize_lbfgsb,
)
from optuna_isbo.search_space import SearchSpace

__all__ = ["GPPrior"]

_DTYPE = torch.float64


@dataclass(frozen=True)
class GPPrior(PriorRecord):
    """A GP prior pre-trained on related studies, for :class:`~optuna_isbo.ISBOSampler`.

    Attributes
    ----------
    distributions
        The search space the prior was fitted on: parameter name to Optuna distribution
        (parameters with a single possible value excluded, as in the sampler's joint space).
    fidelity_param, target_fidelity
        The fidelity axis of that space (``None`` when it has none).
    params
        Kernel and noise hyperparameters (:class:`~optuna_isbo.model.GPParams`); its constant
        ``mean`` is unused (0) because :attr:`mean_function` is the prior mean.
    heteroscedastic
        Whether the noise grows toward low fidelity (only with a fidelity axis).
    mean_function
        Prior mean of the encoded ``x``, in the prior's units.
    y_shift, y_scale
        Output transform: a value ``v`` of a minimized objective (``-v`` when maximized) is
        ``(v - y_shift) / y_scale`` in the prior's units.
    fit_info
        Summary of the fit: ``objective``, ``n_studies``, ``n_points``, ``loss`` (the final
        objective per point) and ``study_names``.

    Raises
    ------
    ValueError
        On construction, if a number is outside the range that
        :func:`~optuna_isbo.meta.fit_prior` produces (the message names the field and the
        range): ``y_scale`` finite and positive, ``|y_shift| <= 1e12 y_scale``, every mean
        weight in ``[-20, 20]``, and each kernel hyperparameter within the bounds of the fit
        (lengthscales ``[0.025, 100]``, outputscale ``[0.01, 100]``, noise ``[1e-6, 10]``,
        fidelity_beta ``[1e-4, 100]``, fidelity_exponent ``[0.25, 4]``, noise_slope
        ``[0, 10]``).
    """

    def search_space(self) -> SearchSpace:
        """The encoding of :attr:`distributions` with the prior's fidelity axis."""
        return SearchSpace(self.distributions, self.fidelity_param, self.target_fidelity)

    @property
    def has_fidelity(self) -> bool:
        """Whether the prior's GP has a fidelity column."""
        return self.fidelity_param is not None

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        """Map minimized objective values ``(n,)`` to the prior's units ``(n,)``.

        Finite values far on the other side of ``y_shift`` (their difference beyond the float64
        range) are divided by ``y_scale`` before the shift is taken off, so that they stay
        finite whenever their value in the prior's units is.
        """
        y = y.to(_DTYPE)
        z = (y - self.y_shift) / self.y_scale
        overflow = torch.isfinite(y) & ~torch.isfinite(z)
        if bool(overflow.any()):
            z = torch.where(overflow, y / self.y_scale - self.y_shift / self.y_scale, z)
        return z

    def untransform(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`transform`, finite wherever the result is within float64 range."""
        y = y.to(_DTYPE)
        v = y * self.y_scale + self.y_shift
        overflow = torch.isfinite(y) & ~torch.isfinite(v)
        if bool(overflow.any()):
            v = torch.where(overflow, (y + self.y_shift / self.y_scale) * self.y_scale, v)
        return v

    def condition(self, inputs: torch.Tensor, y: torch.Tensor) -> GPModel:
        """The prior GP conditioned on data, with the pre-trained hyperparameters held fixed.

        Parameters
        ----------
        inputs
            ``(n, D)`` model inputs: encoded ``x``, then ``s`` when the prior has a fidelity.
        y
            ``(n,)`` values in the prior's units (see :meth:`transform`).
        """
        return condition(
            inputs.to(_DTYPE),
            y.to(_DTYPE),
            self.params,
            self.has_fidelity,
            self.heteroscedastic,
            mean_fn=self.mean_function,
        )

    def adapt(
        self, inputs: torch.Tensor, y: torch.Tensor, *, log_sd: float = 1.0, max_iter: int = 50
    ) -> GPModel:
        """The prior GP conditioned on data, its signal and noise variances refitted to it.

        The mean function, lengthscales and fidelity hyperparameters keep their pre-trained
        values; the outputscale ``sigma^2`` and the noise variance ``sigma_0^2`` are the MAP
        estimate under the new data with a log-normal hyperprior centred on their pre-trained
        values ``sigma_pre^2``, ``sigma_0,pre^2``:

        .. code-block:: text

            maximize over theta = (log sigma^2, log sigma_0^2):
                log N(y | m_w(X), K_theta + Sigma_theta)
                - sum_k (theta_k - theta_k,pre)^2 / (2 log_sd^2)

        With a handful of points the hyperprior dominates and the result stays near
        :meth:`condition`; as the study grows, its own data decide how noisy it is and how
        far its values spread. Related studies often share where the good region is but not
        their noise level, which the pre-trained noise (an average over the studies) would
        otherwise impose as a floor on what the GP can resolve.

        Parameters
        ----------
        inputs
            ``(n, D)`` model inputs: encoded ``x``, then ``s`` when the prior has a fidelity.
        y
            ``(n,)`` values in the prior's units (see :meth:`transform`).
        log_sd
            Standard deviation of the hyperprior in natural-log units (1.0: a factor of
            ``e`` either way is one standard deviation). 0 holds both variances at their
            pre-trained values, which is :meth:`condition`.
        max_iter
            Iteration cap of L-BFGS-B.

        Returns
        -------
        GPModel
            The conditioned GP with the refitted variances in its ``params``.
        """
        if not (math.isfinite(log_sd) and log_sd >= 0):
            raise ValueError(f"`log_sd` must be finite and non-negative, got {log_sd}.")
        inputs, y = inputs.to(_DTYPE), y.to(_DTYPE)
        if log_sd == 0 or y.shape[0] == 0:
            return self.condition(inputs, y)
        resid = (y - self.mean_function(inputs))[None]
        theta_pre = torch.stack([self.params.outputscale.log(), self.params.noise.log()])

        def loss_fn(theta: torch.Tensor) -> torch.Tensor | None:
            params = replace(self.params, outputscale=theta[0].exp(), noise=theta[1].exp())
            nll = _neg_log_ml(inputs[None], resid, params, self.has_fidelity, self.heteroscedastic)
            if nll is None:
                return None
            hyper = 0.5 * ((theta - theta_pre) / log_sd).square().sum()
            return (nll + hyper) / y.shape[0]

        theta, loss = minimize_lbfgsb(
            loss_fn,
            theta_pre.numpy(),
            [_LOG_OUTPUTSCALE_BOUNDS, _LOG_NOISE_BOUNDS],
            max_iter,
        )
        if not math.isfinite(loss):
            return self.condition(inputs, y)
        params = replace(
            self.params,
            outputscale=torch.tensor(math.exp(theta[0]), dtype=_DTYPE),
            noise=torch.tensor(math.exp(theta[1]), dtype=_DTYPE),
        )
        return condition(
            inputs, y, params, self.has_fidelity, self.heteroscedastic, mean_fn=self.mean_function
        )

    def check_search_space(
        self,
        distributions: dict[str, BaseDistribution],
        fidelity_param: str | None,
        *,
        target_fidelity: float | None = None,
    ) -> None:
        """Raise :class:`ValueError` naming every difference from the prior's search space.

        Parameters
        ----------
        distributions
            A study's joint search space (single-valued parameters are ignored).
        fidelity_param
            The fidelity parameter that the study's space actually has (``None`` for none).
        target_fidelity
            The study's target fidelity (``SearchSpace.target_fidelity``), which must be the
            prior's: the fidelity axis ``s`` of the prior's GP ends at its target fidelity, so
            another target would put every observation at the wrong ``s``. ``None`` skips this
            check; it is ignored when ``fidelity_param`` is ``None``.
        """
        problems = _space_differences(self.distributions, distributions)
        if fidelity_param != self.fidelity_param:
            problems.append(
                f"fidelity parameter is {fidelity_param!r} but the prior's is "
                f"{self.fidelity_param!r}"
            )
        elif (
            fidelity_param is not None
            and target_fidelity is not None
            and self.target_fidelity is not None
            and not math.isclose(float(target_fidelity), self.target_fidelity, rel_tol=1e-12)
        ):
            problems.append(
                f"target fidelity of {fidelity_param!r} is {float(target_fidelity):g} but the "
                f"prior was fitted with target_fidelity={self.target_fidelity:g}; give the "
                f"sampler target_fidelity={self.target_fidelity:g}, or fit the prior with "
                f"target_fidelity={float(target_fidelity):g}"
            )
        if problems:
            raise ValueError(
                "The search space does not match the GP prior's: " + "; ".join(problems) + "."
            )
