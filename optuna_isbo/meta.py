r"""A GP prior pre-trained on finished studies of related tasks (HyperBO).

Wang et al., "Pre-trained Gaussian processes for Bayesian optimization" (HyperBO), fit the mean
function and the kernel hyperparameters of a GP on the data of related tasks, then use that
fixed GP as the prior of a new task. :func:`fit_prior` does this for Optuna studies that share a
search space, and :class:`GPPrior` is the result: it can be saved to and loaded from a plain JSON
file and given to :class:`~optuna_isbo.ISBOSampler` as ``ISBOSampler(prior=...)``.

**Model.** Each study ``i`` is an independent draw from one GP,

.. math::

    y_i(x, s) = m_w(x) + f_i(x, s) + \varepsilon, \qquad
    f_i \sim \mathcal{GP}(0, k_\theta), \quad \varepsilon \sim \mathcal{N}(0, \sigma_n^2(s)),

with the kernel and noise law of :mod:`optuna_isbo.model` (Matérn-5/2 ARD on ``x``, times the
fidelity kernel on ``s`` when the space has a fidelity parameter) and a mean function ``m_w`` of
the encoded hyperparameters ``x`` (the fidelity is not an input of the mean):

- ``"constant"``: :math:`m(x) = b`;
- ``"linear"``: :math:`m(x) = b + w^\top x`;
- ``"mlp"``: :math:`m(x) = b + v^\top \tanh(W^\top x + c)` with ``hidden_units`` hidden units.

**Objectives.** ``"marginal_likelihood"`` (default; studies need not share points) maximizes
:math:`\sum_i \log p(y_i \mid X_i; w, \theta)` plus weak log priors on the hyperparameters (the
defaults of :mod:`optuna_isbo.model`) and a standard-normal prior on the mean weights.
``"empirical_kl"`` needs every study evaluated at the same ``n`` points ``X``; with the ``M``
studies' values as columns of ``Y (n, M)``, the empirical mean ``mu = Y 1 / M`` and the unbiased
empirical covariance ``S = (Y - mu)(Y - mu)^T / (M - 1)``, it minimizes

.. math::

    \mathrm{KL}\left(\mathcal{N}(\mu, S) \,\|\, \mathcal{N}(m_w(X), K_\theta(X) + \Sigma_n)\right)
    = \tfrac12\left[\mathrm{tr}(K^{-1} S) + (m - \mu)^\top K^{-1} (m - \mu)
      + \log\det K\right] + \mathrm{const},

the ``log det S`` term (infinite when ``M <= n``) being a constant of the parameters.
Both are minimized with L-BFGS-B on torch gradients.

**Units.** Values are sign-flipped for maximized studies (so that the prior is always about a
minimized objective), and each study's outliers are tamed as the sampler tames them
(:func:`~optuna_isbo.model.tame_outliers`: values beyond :math:`q_{75} + 5 (q_{75} - q_{25})`
of the study are set to that fence, runs marked ``isbo:diverged`` to its worst other value), so
that one diverged run reported at its loss cannot set the scale. The values are then pooled
over all studies and standardized *once* with the pooled mean and standard deviation
(``y_shift``, ``y_scale``). Studies are not standardized one by one:
objective values of related tasks share a scale, and the prior mean is what they have in
common. A new study's values go through the same transform (:meth:`GPPrior.transform`). The
mean and standard deviation are taken of the values divided by their largest magnitude, so
values near the float64 limit (``1e300``) or near its smallest normal numbers standardize as
well as values near 1, and the fit does not depend on the objective's unit. Values equal to
about 12 significant digits have the scale of their magnitude.

**File format** (:meth:`GPPrior.save`, :meth:`GPPrior.load`): one JSON object, no pickle::

    {
      "format": "optuna-isbo-gp-prior",
      "version": 1,
      "search_space": {"<name>": <optuna distribution JSON object>, ...},
      "fidelity_param": "<name>" | null,
      "target_fidelity": <number> | null,
      "output_transform": {"y_shift": <number>, "y_scale": <positive number>},
      "kernel": {"lengthscales": [<positive>, ... (one per encoded column of x)],
                 "outputscale": <positive>, "noise": <positive>,
                 "fidelity_beta": <positive>, "fidelity_exponent": <positive>,
                 "noise_slope": <non-negative>, "heteroscedastic": <bool>},
      "mean_function": {"kind": "constant" | "linear" | "mlp", "input_dim": <int>,
                        "hidden_units": <int, 0 unless "mlp">,
                        "weights": {"<name>": <number or (nested) list of numbers>, ...}},
      "fit": {"objective": "<objective>", "n_studies": <int>, "n_points": <int>,
              "loss": <number>, "study_names": ["<name>", ...]}
    }

Distributions are written with :func:`optuna.distributions.distribution_to_json`. The mean
weights are ``bias ()`` (all kinds), ``weight (d,)`` (linear), and ``hidden_weight (d, H)``,
``hidden_bias (H,)``, ``output_weight (H,)`` (mlp), ``d`` the number of encoded columns of
``x`` and ``H`` the hidden units. Every field is checked on load (known keys only, types,
shapes, finite numbers, positivity, and the ranges that :func:`fit_prior` produces:
``|y_shift| <= 1e12 y_scale``, mean weights in ``[-20, 20]``, each kernel hyperparameter
within the bounds of the fit); any violation raises :class:`ValueError` naming the field.
"""

from __future__ import annotations

import json
import math
import operator
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo.model import (
    _JITTER,
    _LOG_BETA_BOUNDS,
    _LOG_EXPONENT_BOUNDS,
    _LOG_LENGTHSCALE_BOUNDS,
    _LOG_NOISE_BOUNDS,
    _LOG_NOISE_SLOPE_BOUNDS,
    _LOG_OUTPUTSCALE_BOUNDS,
    GPModel,
    GPParams,
    _default_priors,
    _kernel,
    _noise_var,
    condition,
    minimize_lbfgsb,
    tame_outliers,
)
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ran_in_full

__all__ = ["GPPrior", "MeanFunction", "fit_prior"]

FORMAT_NAME = "optuna-isbo-gp-prior"
FORMAT_VERSION = 1
MEAN_KINDS = ("constant", "linear", "mlp")
OBJECTIVES = ("marginal_likelihood", "empirical_kl")
_MAX_FILE_BYTES = 64 * 2**20
_WEIGHT_BOUND = 20.0
"""Bound on every mean weight, in the prior's (standardized) units: the box of the fit."""
_MAX_SHIFT_IN_SCALES = 1e12
"""Bound on ``|y_shift| / y_scale``: the fit's pooled mean is at most ``1 / 1e-12`` of its
standard deviation (values closer together get the scale of their magnitude)."""
_KERNEL_RANGES: dict[str, tuple[float, float]] = {
    "lengthscales": (math.exp(_LOG_LENGTHSCALE_BOUNDS[0]), math.exp(_LOG_LENGTHSCALE_BOUNDS[1])),
    "outputscale": (math.exp(_LOG_OUTPUTSCALE_BOUNDS[0]), math.exp(_LOG_OUTPUTSCALE_BOUNDS[1])),
    "noise": (math.exp(_LOG_NOISE_BOUNDS[0]), math.exp(_LOG_NOISE_BOUNDS[1])),
    "fidelity_beta": (math.exp(_LOG_BETA_BOUNDS[0]), math.exp(_LOG_BETA_BOUNDS[1])),
    "fidelity_exponent": (math.exp(_LOG_EXPONENT_BOUNDS[0]), math.exp(_LOG_EXPONENT_BOUNDS[1])),
    "noise_slope": (0.0, math.exp(_LOG_NOISE_SLOPE_BOUNDS[1])),  # 0: homoscedastic
}
"""The range of each kernel hyperparameter: the bounds of the fit (those of
:mod:`optuna_isbo.model`)."""
_RANGE_SLACK = 1e-9
"""Relative slack of the range checks: ``exp`` of a bound may round either way."""
_DTYPE = torch.float64

StudyLike = Study | tuple[str | BaseStorage, str]


# ---------------------------------------------------------------------------------------------
# Mean function
# ---------------------------------------------------------------------------------------------


def _weight_shapes(kind: str, input_dim: int, hidden_units: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights of a mean function, in packing order."""
    if kind == "constant":
        return {"bias": ()}
    if kind == "linear":
        return {"weight": (input_dim,), "bias": ()}
    if kind == "mlp":
        return {
            "hidden_weight": (input_dim, hidden_units),
            "hidden_bias": (hidden_units,),
            "output_weight": (hidden_units,),
            "bias": (),
        }
    raise ValueError(f"Mean function kind must be one of {MEAN_KINDS}, got {kind!r}.")


def _mean_forward(kind: str, weights: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Mean ``(..., n)`` at encoded hyperparameters ``X (..., n, d)``."""
    if kind == "constant":
        return weights["bias"].expand(X.shape[:-1])
    if kind == "linear":
        return weights["bias"] + X @ weights["weight"]
    hidden = torch.tanh(X @ weights["hidden_weight"] + weights["hidden_bias"])
    return weights["bias"] + hidden @ weights["output_weight"]


@dataclass(frozen=True)
class MeanFunction:
    """A prior mean function of the encoded hyperparameters.

    Called on model inputs ``A (a, D)`` it uses the first ``input_dim`` columns (the encoded
    ``x``; a fidelity column after them is ignored) and returns ``(a,)`` values in the prior's
    units.

    Attributes
    ----------
    kind
        ``"constant"``, ``"linear"`` or ``"mlp"`` (see the module docstring).
    input_dim
        ``d``, the number of encoded columns of ``x``.
    hidden_units
        ``H`` for ``"mlp"``, else 0.
    weights
        Name to float64 tensor, shapes as in the module docstring.
    """

    kind: str
    input_dim: int
    hidden_units: int
    weights: dict[str, torch.Tensor]

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        return _mean_forward(self.kind, self.weights, A[:, : self.input_dim].to(_DTYPE))


# ---------------------------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPPrior:
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
        On construction, if a number is outside the range that :func:`fit_prior` produces
        (the message names the field and the range): ``y_scale`` finite and positive,
        ``|y_shift| <= 1e12 y_scale``, every mean weight in ``[-20, 20]``, and each kernel
        hyperparameter within the bounds of the fit (lengthscales ``[0.025, 100]``, outputscale
        ``[0.01, 100]``, noise ``[1e-6, 10]``, fidelity_beta ``[1e-4, 100]``,
        fidelity_exponent ``[0.25, 4]``, noise_slope ``[0, 10]``).
    """

    distributions: dict[str, BaseDistribution]
    fidelity_param: str | None
    target_fidelity: float | None
    params: GPParams
    heteroscedastic: bool
    mean_function: MeanFunction
    y_shift: float
    y_scale: float
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_ranges(
            self.y_shift, self.y_scale, self.params, self.mean_function.weights, in_file=False
        )

    # -- use -------------------------------------------------------------------------------
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

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-compatible representation described in the module docstring."""
        p = self.params
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "search_space": {
                name: json.loads(distribution_to_json(dist))
                for name, dist in sorted(self.distributions.items())
            },
            "fidelity_param": self.fidelity_param,
            "target_fidelity": self.target_fidelity,
            "output_transform": {"y_shift": self.y_shift, "y_scale": self.y_scale},
            "kernel": {
                "lengthscales": p.lengthscales.tolist(),
                "outputscale": float(p.outputscale),
                "noise": float(p.noise),
                "fidelity_beta": float(p.fidelity_beta),
                "fidelity_exponent": float(p.fidelity_exponent),
                "noise_slope": float(p.noise_slope),
                "heteroscedastic": self.heteroscedastic,
            },
            "mean_function": {
                "kind": self.mean_function.kind,
                "input_dim": self.mean_function.input_dim,
                "hidden_units": self.mean_function.hidden_units,
                "weights": {k: v.tolist() for k, v in self.mean_function.weights.items()},
            },
            "fit": dict(self.fit_info),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the prior as JSON (format in the module docstring)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> GPPrior:
        """Build a prior from its JSON representation, validating every field.

        Raises
        ------
        ValueError
            If a key is missing or unknown, or a value has the wrong type, shape or range.
        """
        return _prior_from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GPPrior:
        """Read a prior written by :meth:`save`.

        The file is parsed as JSON only (never unpickled or evaluated) and validated field by
        field, so a malformed or hostile file raises :class:`ValueError` instead of being used.
        Files over 64 MiB are refused.
        """
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
        if len(raw) > _MAX_FILE_BYTES:
            raise ValueError(f"GP prior file {os.fspath(path)!r} is larger than 64 MiB.")
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(
                f"GP prior file {os.fspath(path)!r} is not valid JSON: {err}"
            ) from None
        return _prior_from_dict(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


# ---------------------------------------------------------------------------------------------
# Validation of the JSON representation
# ---------------------------------------------------------------------------------------------


def _require_keys(obj: Any, keys: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"GP prior: {where} must be a JSON object, got {type(obj).__name__}.")
    expected = set(keys)
    missing = sorted(expected - obj.keys())
    unknown = sorted(str(k) for k in obj.keys() - expected)
    if missing or unknown:
        raise ValueError(f"GP prior: {where} has missing keys {missing} / unknown keys {unknown}.")
    return obj


def _number(value: Any, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"GP prior: {where} must be a number, got {type(value).__name__}.")
    try:
        x = float(value)
    except OverflowError:
        raise ValueError(
            f"GP prior: {where} must be a finite number, got an integer too large for a float "
            "(beyond +-1.8e308)."
        ) from None
    if not math.isfinite(x):
        raise ValueError(f"GP prior: {where} must be finite, got {x}.")
    if positive and not x > 0:
        raise ValueError(f"GP prior: {where} must be positive, got {x}.")
    if nonneg and not x >= 0:
        raise ValueError(f"GP prior: {where} must be non-negative, got {x}.")
    return x


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"GP prior: {where} must be a string, got {type(value).__name__}.")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GP prior: {where} must be an integer >= {minimum}, got {value!r}.")
    return value


def _array(value: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """A float64 tensor of exactly ``shape`` from nested lists of finite numbers."""

    def walk(v: Any, dims: tuple[int, ...], path: str) -> Any:
        if not dims:
            return _number(v, path)
        if not isinstance(v, list) or len(v) != dims[0]:
            got = f"a list of length {len(v)}" if isinstance(v, list) else type(v).__name__
            raise ValueError(f"GP prior: {path} must be a list of length {dims[0]}, got {got}.")
        return [walk(item, dims[1:], f"{path}[{i}]") for i, item in enumerate(v)]

    return torch.tensor(walk(value, shape, where), dtype=_DTYPE).reshape(shape)


_DISTRIBUTION_ATTRIBUTES = {
    "FloatDistribution": {"low", "high", "log", "step"},
    "IntDistribution": {"low", "high", "log", "step"},
    "CategoricalDistribution": {"choices"},
}


def _distribution(name: str, obj: Any) -> BaseDistribution:
    where = f"search_space[{name!r}]"
    obj = _require_keys(obj, ("name", "attributes"), where)
    kind = _string(obj["name"], f"{where}.name")
    if kind not in _DISTRIBUTION_ATTRIBUTES:
        raise ValueError(f"GP prior: {where} has unsupported distribution {kind!r}.")
    attrs = obj["attributes"]
    if not isinstance(attrs, dict) or not set(attrs) <= _DISTRIBUTION_ATTRIBUTES[kind]:
        raise ValueError(f"GP prior: {where} has invalid attributes {attrs!r}.")
    if kind == "CategoricalDistribution":
        choices = attrs.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"GP prior: {where} choices must be a non-empty list.")
        for choice in choices:
            if not (choice is None or isinstance(choice, bool | int | float | str)):
                raise ValueError(f"GP prior: {where} has a non-scalar choice {choice!r}.")
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"GP prior: {where} has a non-finite choice.")
    else:
        for key in ("low", "high"):
            _number(attrs.get(key), f"{where}.{key}")
        if attrs.get("step") is not None:
            _number(attrs["step"], f"{where}.step", positive=True)
        if not isinstance(attrs.get("log", False), bool):
            raise ValueError(f"GP prior: {where}.log must be a boolean.")
    try:
        with warnings.catch_warnings():
            # Optuna warns when it adjusts a range to fit the step; the check below reports it.
            warnings.simplefilter("ignore", UserWarning)
            dist = json_to_distribution(json.dumps(obj))
    except Exception as err:  # the distribution's own checks (low <= high, ...)
        raise ValueError(f"GP prior: {where} is not a valid distribution: {err}") from None
    if not isinstance(dist, FloatDistribution | IntDistribution | CategoricalDistribution):
        raise ValueError(f"GP prior: {where} has unsupported distribution {dist!r}.")
    # A file written by GPPrior.save holds distributions exactly as Optuna built them; one that
    # Optuna would adjust (a high not on the step grid, a fractional integer bound) is not.
    if kind != "CategoricalDistribution":
        adjusted = sorted(key for key, value in attrs.items() if getattr(dist, key) != value)
        if adjusted:
            raise ValueError(
                f"GP prior: {where} is not a valid distribution: Optuna would change its "
                f"{adjusted} to give {dist!r}."
            )
    return dist


def _out_of_range(values: Any, low: float, high: float) -> tuple[tuple[int, ...], float] | None:
    """Index and value of the first element of ``values`` outside ``[low, high]`` (NaN
    included), up to a relative slack; ``None`` if all are inside."""
    t = torch.as_tensor(values).detach().to(device="cpu", dtype=_DTYPE)
    lo = low - _RANGE_SLACK * abs(low)
    hi = high + _RANGE_SLACK * abs(high)
    bad = ~((t >= lo) & (t <= hi))
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0]) if t.ndim else ()
    return index, float(t[index])


def _check_ranges(
    y_shift: float,
    y_scale: float,
    params: GPParams,
    weights: dict[str, torch.Tensor],
    *,
    in_file: bool,
) -> None:
    """Raise :class:`ValueError` unless every number is in the range that :func:`fit_prior`
    produces; the message names the field (as in the file, or as an attribute) and the range.
    """

    def name(section: str, key: str, index: tuple[int, ...] = ()) -> str:
        if in_file:
            return f"{section}.{key}" + "".join(f"[{i}]" for i in index)
        where = {"output_transform": key, "kernel": f"params.{key}"}.get(
            section, f"mean_function.weights[{key!r}]"
        )
        return where + (f"[{', '.join(map(str, index))}]" if index else "")

    y_shift, y_scale = float(y_shift), float(y_scale)
    if not (math.isfinite(y_scale) and y_scale > 0):
        raise ValueError(
            f"GP prior: {name('output_transform', 'y_scale')} must be finite and positive, "
            f"got {y_scale:.6g}."
        )
    if not (math.isfinite(y_shift) and abs(y_shift) <= _MAX_SHIFT_IN_SCALES * y_scale):
        raise ValueError(
            f"GP prior: {name('output_transform', 'y_shift')} must lie in [-1e12 * y_scale, "
            f"1e12 * y_scale] = [{-_MAX_SHIFT_IN_SCALES * y_scale:.6g}, "
            f"{_MAX_SHIFT_IN_SCALES * y_scale:.6g}] (the pooled mean of the fitted values is "
            f"within 1e12 of their standard deviations), got {y_shift:.6g} with y_scale = "
            f"{y_scale:.6g}."
        )
    for key, (low, high) in _KERNEL_RANGES.items():
        found = _out_of_range(getattr(params, key), low, high)
        if found is not None:
            raise ValueError(
                f"GP prior: {name('kernel', key, found[0])} must lie in [{low:.6g}, "
                f"{high:.6g}] (the bounds of the fit), got {found[1]:.6g}."
            )
    for key, value in weights.items():
        found = _out_of_range(value, -_WEIGHT_BOUND, _WEIGHT_BOUND)
        if found is not None:
            raise ValueError(
                f"GP prior: {name('mean_function.weights', key, found[0])} must lie in "
                f"[{-_WEIGHT_BOUND:g}, {_WEIGHT_BOUND:g}] (the bounds of the fit, in standard "
                f"deviations of the objective), got {found[1]:.6g}."
            )


def _prior_from_dict(data: Any) -> GPPrior:
    data = _require_keys(
        data,
        (
            "format",
            "version",
            "search_space",
            "fidelity_param",
            "target_fidelity",
            "output_transform",
            "kernel",
            "mean_function",
            "fit",
        ),
        "the top level",
    )
    if _string(data["format"], "format") != FORMAT_NAME:
        raise ValueError(f"GP prior: format must be {FORMAT_NAME!r}, got {data['format']!r}.")
    if isinstance(data["version"], bool) or data["version"] != FORMAT_VERSION:
        raise ValueError(
            f"GP prior: unsupported version {data['version']!r} (this reader reads "
            f"{FORMAT_VERSION})."
        )
    if not isinstance(data["search_space"], dict) or not data["search_space"]:
        raise ValueError("GP prior: search_space must be a non-empty JSON object.")
    for name in data["search_space"]:
        _string(name, f"search_space name {name!r}")
    distributions = {name: _distribution(name, obj) for name, obj in data["search_space"].items()}
    fidelity_param = data["fidelity_param"]
    if fidelity_param is not None:
        _string(fidelity_param, "fidelity_param")
    if fidelity_param is not None and fidelity_param not in distributions:
        raise ValueError(
            f"GP prior: fidelity_param {fidelity_param!r} is not in the search space."
        )
    target = data["target_fidelity"]
    target = None if target is None else _number(target, "target_fidelity", positive=True)
    try:
        space = SearchSpace(distributions, fidelity_param, target)
    except ValueError as err:
        raise ValueError(f"GP prior: invalid search space: {err}") from None
    if space.fidelity_param != fidelity_param:
        raise ValueError(
            f"GP prior: fidelity_param {fidelity_param!r} is not a usable fidelity axis."
        )

    out = _require_keys(data["output_transform"], ("y_shift", "y_scale"), "output_transform")
    y_shift = _number(out["y_shift"], "output_transform.y_shift")
    y_scale = _number(out["y_scale"], "output_transform.y_scale", positive=True)

    kern = _require_keys(
        data["kernel"],
        (
            "lengthscales",
            "outputscale",
            "noise",
            "fidelity_beta",
            "fidelity_exponent",
            "noise_slope",
            "heteroscedastic",
        ),
        "kernel",
    )
    lengthscales = _array(kern["lengthscales"], (space.dim,), "kernel.lengthscales")
    if not bool((lengthscales > 0).all()):
        raise ValueError("GP prior: kernel.lengthscales must be positive.")
    if not isinstance(kern["heteroscedastic"], bool):
        raise ValueError("GP prior: kernel.heteroscedastic must be a boolean.")

    def scalar(key: str, *, nonneg: bool = False) -> torch.Tensor:
        value = _number(kern[key], f"kernel.{key}", positive=not nonneg, nonneg=nonneg)
        return torch.tensor(value, dtype=_DTYPE)

    params = GPParams(
        lengthscales=lengthscales,
        outputscale=scalar("outputscale"),
        noise=scalar("noise"),
        mean=torch.zeros((), dtype=_DTYPE),
        fidelity_beta=scalar("fidelity_beta"),
        fidelity_exponent=scalar("fidelity_exponent"),
        noise_slope=scalar("noise_slope", nonneg=True),
    )

    mf = _require_keys(
        data["mean_function"], ("kind", "input_dim", "hidden_units", "weights"), "mean_function"
    )
    kind = _string(mf["kind"], "mean_function.kind")
    if kind not in MEAN_KINDS:
        raise ValueError(
            f"GP prior: mean_function.kind must be one of {MEAN_KINDS}, got {kind!r}."
        )
    input_dim = _integer(mf["input_dim"], "mean_function.input_dim", 0)
    if input_dim != space.dim:
        raise ValueError(
            f"GP prior: mean_function.input_dim is {input_dim} but the search space encodes to "
            f"{space.dim} columns."
        )
    hidden = _integer(mf["hidden_units"], "mean_function.hidden_units", 1 if kind == "mlp" else 0)
    if kind != "mlp" and hidden != 0:
        raise ValueError("GP prior: mean_function.hidden_units must be 0 unless kind is 'mlp'.")
    if hidden > 4096:
        raise ValueError("GP prior: mean_function.hidden_units must be at most 4096.")
    shapes = _weight_shapes(kind, input_dim, hidden)
    raw_weights = _require_keys(mf["weights"], shapes, "mean_function.weights")
    weights = {
        name: _array(raw_weights[name], shape, f"mean_function.weights.{name}")
        for name, shape in shapes.items()
    }

    fit = _require_keys(
        data["fit"], ("objective", "n_studies", "n_points", "loss", "study_names"), "fit"
    )
    if _string(fit["objective"], "fit.objective") not in OBJECTIVES:
        raise ValueError(f"GP prior: fit.objective must be one of {OBJECTIVES}.")
    names = fit["study_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("GP prior: fit.study_names must be a list of strings.")
    fit_info = {
        "objective": fit["objective"],
        "n_studies": _integer(fit["n_studies"], "fit.n_studies", 0),
        "n_points": _integer(fit["n_points"], "fit.n_points", 0),
        "loss": _number(fit["loss"], "fit.loss"),
        "study_names": list(names),
    }
    _check_ranges(y_shift, y_scale, params, weights, in_file=True)
    return GPPrior(
        distributions=distributions,
        fidelity_param=fidelity_param,
        target_fidelity=None if fidelity_param is None else float(space.target_fidelity),
        params=params,
        heteroscedastic=kern["heteroscedastic"] and fidelity_param is not None,
        mean_function=MeanFunction(kind, input_dim, hidden, weights),
        y_shift=y_shift,
        y_scale=y_scale,
        fit_info=fit_info,
    )


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _space_differences(
    expected: dict[str, BaseDistribution], actual: dict[str, BaseDistribution]
) -> list[str]:
    """Human-readable differences between two search spaces (single values ignored)."""
    expected = {k: v for k, v in expected.items() if not v.single()}
    actual = {k: v for k, v in actual.items() if not v.single()}
    problems = []
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if missing:
        problems.append(f"missing parameters {missing}")
    if extra:
        problems.append(f"extra parameters {extra}")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] != actual[name]:
            problems.append(f"{name!r} is {actual[name]!r}, expected {expected[name]!r}")
    return problems


@dataclass
class _StudyData:
    name: str
    inputs: torch.Tensor  # (n_i, D)
    y: torch.Tensor  # (n_i,) minimized objective, raw units


def _load_study(item: Any) -> Study:
    if isinstance(item, Study):
        return item
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str | BaseStorage)
        and isinstance(item[1], str)
    ):
        return optuna.load_study(study_name=item[1], storage=item[0])
    raise TypeError(
        "Each study must be an optuna.Study or a (storage, study_name) pair, got "
        f"{type(item).__name__}."
    )


def _collect(
    studies: Sequence[StudyLike],
    search_space: dict[str, BaseDistribution] | None,
    fidelity_param: str | None,
    target_fidelity: float | None,
    min_trials: int,
) -> tuple[SearchSpace, list[_StudyData]]:
    loaded = []
    for item in studies:
        study = _load_study(item)
        if len(study.directions) != 1:
            raise ValueError(f"Study {study.study_name!r} is multi-objective; not supported.")
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)
        ]
        if len(trials) < min_trials:
            warnings.warn(
                f"Study {study.study_name!r} has {len(trials)} completed trials with a finite "
                f"value (fewer than min_trials={min_trials}); fit_prior skips it.",
                UserWarning,
                stacklevel=3,
            )
            continue
        loaded.append((study, trials))
    if not loaded:
        raise ValueError("fit_prior needs at least one study with enough completed trials.")

    reference = search_space
    reference_name = "`search_space`"
    if reference is None:
        reference = _trials_space(loaded[0][1])
        reference_name = f"study {loaded[0][0].study_name!r}"
    reference = {k: v for k, v in reference.items() if not v.single()}
    for study, trials in loaded:
        problems = _space_differences(reference, _trials_space(trials))
        if problems:
            raise ValueError(
                f"Search space of study {study.study_name!r} differs from that of "
                f"{reference_name}: " + "; ".join(problems) + "."
            )
    space = SearchSpace(reference, fidelity_param, target_fidelity)
    data = []
    for study, trials in loaded:
        X, s = space.encode_trials(trials)
        inputs = X if space.fidelity_param is None else torch.cat([X, s[:, None]], dim=1)
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        y = torch.tensor([sign * float(t.value) for t in trials], dtype=_DTYPE)  # type: ignore[arg-type]
        # As the sampler does: one diverged run reported at its loss (1e12) would otherwise
        # set the pooled scale and flatten the prior everywhere else.
        y = tame_outliers(y, torch.tensor([not ran_in_full(t) for t in trials]))
        data.append(_StudyData(study.study_name, inputs, y))
    return space, data


def _trials_space(trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Intersection of the trials' distributions (single-valued ones dropped)."""
    space = optuna.search_space.intersection_search_space(trials)
    return {k: v for k, v in space.items() if not v.single()}


@dataclass
class _Layout:
    """Positions of the parameters in the unconstrained vector ``theta``."""

    d: int
    shapes: dict[str, tuple[int, ...]]

    @property
    def n_kernel(self) -> int:
        return self.d + 5

    def unpack(self, theta: torch.Tensor) -> tuple[GPParams, dict[str, torch.Tensor]]:
        d = self.d
        params = GPParams(
            lengthscales=theta[:d].exp(),
            outputscale=theta[d].exp(),
            noise=theta[d + 1].exp(),
            mean=torch.zeros((), dtype=_DTYPE),
            fidelity_beta=theta[d + 2].exp(),
            fidelity_exponent=theta[d + 3].exp(),
            noise_slope=theta[d + 4].exp(),
        )
        weights = {}
        i = self.n_kernel
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            weights[name] = theta[i : i + size].reshape(shape)
            i += size
        return params, weights


def _neg_log_ml(
    inputs: torch.Tensor,
    resid: torch.Tensor,
    params: GPParams,
    has_fidelity: bool,
    heteroscedastic: bool,
) -> torch.Tensor | None:
    """Summed ``-log N(resid_j | 0, K_j + noise)`` over a batch, up to ``n/2 log 2 pi``.

    ``inputs (m, n, D)`` and ``resid (m, n)``; returns None when a matrix is not positive
    definite.
    """
    m, n, D = inputs.shape
    K = _kernel(inputs, inputs, params, has_fidelity)
    noise = _noise_var(inputs.reshape(m * n, D), params, heteroscedastic).reshape(m, n)
    K = K + torch.diag_embed(noise + _JITTER)
    chol, info = torch.linalg.cholesky_ex(K)
    if bool((info != 0).any()):
        return None
    z = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)
    return 0.5 * z.square().sum() + chol.diagonal(dim1=-2, dim2=-1).log().sum()


def _int_argument(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int``: any integral number (Python, NumPy); not a bool."""
    if not isinstance(value, bool):
        try:
            result = operator.index(value)
        except TypeError:
            pass
        else:
            if result >= minimum:
                return result
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _standardization(y: torch.Tensor) -> tuple[float, float, float]:
    """``(peak, mean, std)`` with ``y = peak * (mean + std * z)`` for standardized ``z``.

    ``peak = max |y|`` and the mean and the (unbiased) standard deviation are those of
    ``y / peak``, which lies in ``[-1, 1]``, so that nothing overflows or underflows. Values
    equal to within ``1e-12`` of their magnitude (or a single value) get ``std = 1``: the
    scale is their magnitude. All zeros give ``(1, 0, 1)``.
    """
    peak = float(y.abs().max())
    if peak == 0.0:
        return 1.0, 0.0, 1.0
    u = y / peak
    mean = float(u.mean())
    std = float(u.std()) if u.shape[0] > 1 else 0.0
    return peak, mean, std if std > 1e-12 else 1.0


def _shared_points(data: list[_StudyData]) -> tuple[torch.Tensor, torch.Tensor]:
    """Common inputs ``(n, D)`` and values ``(n, M)`` when every study has the same points."""
    X0 = data[0].inputs
    keys0 = [tuple(np.round(row.numpy(), 10)) for row in X0]
    index = {key: i for i, key in enumerate(keys0)}
    if len(index) != len(keys0):
        raise ValueError(
            f"objective='empirical_kl' needs distinct points, but study {data[0].name!r} "
            "repeats a configuration."
        )
    Y = torch.empty(X0.shape[0], len(data), dtype=_DTYPE)
    for j, study in enumerate(data):
        keys = [tuple(np.round(row.numpy(), 10)) for row in study.inputs]
        if len(keys) != len(keys0) or set(keys) != set(keys0) or len(set(keys)) != len(keys):
            raise ValueError(
                "objective='empirical_kl' needs every study evaluated at the same points, but "
                f"study {study.name!r} and study {data[0].name!r} differ; use "
                "objective='marginal_likelihood'."
            )
        for row, key in enumerate(keys):
            Y[index[key], j] = study.y[row]
    return X0, Y


def fit_prior(
    studies: Sequence[StudyLike],
    *,
    mean: str = "linear",
    objective: str = "marginal_likelihood",
    search_space: dict[str, BaseDistribution] | None = None,
    fidelity_param: str | None = "super_batch_size",
    target_fidelity: float | None = None,
    min_trials: int = 5,
    hidden_units: int = 16,
    max_iter: int = 500,
    seed: int = 0,
) -> GPPrior:
    """Pre-train a GP prior (mean function and kernel hyperparameters) on finished studies.

    Parameters
    ----------
    studies
        Finished single-objective studies of related tasks: :class:`optuna.study.Study` objects
        (any storage) or ``(storage, study_name)`` pairs, ``storage`` a URL or a
        :class:`~optuna.storages.BaseStorage`. Their search spaces must match (same parameter
        names and distributions; parameters with a single value are ignored). Maximized
        studies are sign-flipped. Only ``COMPLETE`` trials with a finite value count, their
        outliers and diverged runs (``isbo:diverged``) tamed as the sampler tames them.
    mean
        Mean function: ``"constant"``, ``"linear"`` (default) or ``"mlp"``.
    objective
        ``"marginal_likelihood"`` (default; studies may have different points) or
        ``"empirical_kl"`` (every study evaluated at the same configurations, at least two
        studies). See the module docstring.
    search_space
        The expected search space. Defaults to that of the first usable study; every study
        must match it.
    fidelity_param, target_fidelity
        The fidelity axis, as for :class:`~optuna_isbo.ISBOSampler` (ignored when the space has
        no such parameter).
    min_trials
        Studies with fewer usable trials are skipped with a warning.
    hidden_units
        Hidden units of the ``"mlp"`` mean.
    max_iter
        Iteration cap of L-BFGS-B.
    seed
        Seed of the initial ``"mlp"`` weights.

    Returns
    -------
    GPPrior
        The fitted prior, in units of the pooled, standardized minimized objective.

    Raises
    ------
    ValueError
        On mismatched search spaces (the message names the study and the parameters), unknown
        ``mean`` or ``objective``, a count or seed that is not an integer in range, no usable
        study, ``"empirical_kl"`` on studies that do not share their points, or objective
        values whose standard deviation exceeds the float64 range.
    """
    if mean not in MEAN_KINDS:
        raise ValueError(f"`mean` must be one of {MEAN_KINDS}, got {mean!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
    min_trials = _int_argument("min_trials", min_trials, 1)
    hidden_units = _int_argument("hidden_units", hidden_units, 1)
    max_iter = _int_argument("max_iter", max_iter, 1)
    seed = _int_argument("seed", seed, 0)
    space, data = _collect(studies, search_space, fidelity_param, target_fidelity, min_trials)
    has_fidelity = space.fidelity_param is not None
    heteroscedastic = has_fidelity

    y_all = torch.cat([s.y for s in data])
    peak, unit_mean, unit_std = _standardization(y_all)
    y_shift, y_scale = peak * unit_mean, peak * unit_std
    if not math.isfinite(y_scale):
        raise ValueError(
            "fit_prior cannot standardize the objective values: their standard deviation "
            f"({unit_std:.3g} x {peak:.3g}) exceeds the float64 range. Rescale the objective."
        )
    for s in data:
        s.y = (s.y / peak - unit_mean) / unit_std

    shared: tuple[torch.Tensor, torch.Tensor] | None = None
    if objective == "empirical_kl":
        if len(data) < 2:
            raise ValueError("objective='empirical_kl' needs at least two usable studies.")
        shared = _shared_points(data)

    d = space.dim
    layout = _Layout(d, _weight_shapes(mean, d, hidden_units if mean == "mlp" else 0))
    priors = _default_priors(d + (1 if has_fidelity else 0))
    n_total = int(y_all.shape[0])

    # Studies with the same number of points are evaluated as one batch.
    groups: dict[int, list[_StudyData]] = {}
    for study in data:
        groups.setdefault(study.inputs.shape[0], []).append(study)
    batches = [
        (torch.stack([s.inputs for s in group]), torch.stack([s.y for s in group]))
        for group in groups.values()
    ]

    def loss_fn(theta: torch.Tensor) -> torch.Tensor | None:
        params, weights = layout.unpack(theta)
        if shared is None:
            total = theta.new_zeros(())
            for inputs, y in batches:
                resid = y - _mean_forward(mean, weights, inputs[..., :d])
                nll = _neg_log_ml(inputs, resid, params, has_fidelity, heteroscedastic)
                if nll is None:
                    return None
                total = total + nll
        else:
            X, Y = shared
            n, m = Y.shape
            K = _kernel(X, X, params, has_fidelity)
            K = K + torch.diag(_noise_var(X, params, heteroscedastic) + _JITTER)
            chol, info = torch.linalg.cholesky_ex(K)
            if int(info) != 0:
                return None
            mu = Y.mean(1)
            centred = (Y - mu[:, None]) / math.sqrt(m - 1)
            diff = mu - _mean_forward(mean, weights, X[:, :d])
            Z = torch.linalg.solve_triangular(
                chol, torch.cat([centred, diff[:, None]], 1), upper=False
            )
            kl = 0.5 * Z.square().sum() + chol.diagonal().log().sum()
            total = m * kl  # on the scale of a sum of m per-study log likelihoods
        log_prior = priors.lengthscale.log_prob(params.lengthscales).sum()
        log_prior = log_prior + priors.outputscale.log_prob(params.outputscale)
        log_prior = log_prior + priors.noise.log_prob(params.noise)
        if has_fidelity:
            log_prior = log_prior + priors.fidelity_beta.log_prob(params.fidelity_beta)
            log_prior = log_prior + priors.fidelity_exponent.log_prob(params.fidelity_exponent)
            log_prior = log_prior + priors.noise_slope.log_prob(params.noise_slope)
        w = theta[layout.n_kernel :]
        log_prior = log_prior - 0.5 * w.square().sum()
        return (total - log_prior) / n_total

    fixed_beta = (math.log(0.5), math.log(0.5))
    fixed_exp = (math.log(1.5), math.log(1.5))
    fixed_slope = (math.log(1e-3), math.log(1e-3))
    bounds = (
        [_LOG_LENGTHSCALE_BOUNDS] * d
        + [_LOG_OUTPUTSCALE_BOUNDS, _LOG_NOISE_BOUNDS]
        + [_LOG_BETA_BOUNDS if has_fidelity else fixed_beta]
        + [_LOG_EXPONENT_BOUNDS if has_fidelity else fixed_exp]
        + [_LOG_NOISE_SLOPE_BOUNDS if heteroscedastic else fixed_slope]
    )
    n_weights = sum(math.prod(shape) for shape in layout.shapes.values())
    bounds += [(-_WEIGHT_BOUND, _WEIGHT_BOUND)] * n_weights
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    rng = np.random.default_rng(seed)
    ls0 = math.exp(priors.lengthscale.loc.item() - priors.lengthscale.scale.item() ** 2)
    ls0 = min(max(ls0, 0.1), 2.0)
    kernel0 = [math.log(ls0)] * d + [0.0, math.log(0.1), math.log(0.5), math.log(1.5), 0.0]
    weights0: list[float] = []
    for name, shape in layout.shapes.items():
        size = math.prod(shape)
        if name == "hidden_weight":
            weights0 += list(rng.normal(0.0, 1.0, size))
        elif name == "hidden_bias":
            weights0 += list(rng.normal(0.0, 0.5, size))
        else:
            weights0 += [0.0] * size
    x0 = np.clip(np.array(kernel0 + weights0, dtype=np.float64), lo, hi)

    theta_found, loss_found = minimize_lbfgsb(loss_fn, x0, bounds, max_iter)
    feasible = math.isfinite(loss_found)
    theta_best = theta_found if feasible else x0
    final_loss = loss_found if feasible else math.nan
    params, weights = layout.unpack(torch.from_numpy(np.array(theta_best)))
    params = replace(
        params, **{f.name: getattr(params, f.name).detach().clone() for f in fields(params)}
    )
    if not heteroscedastic:
        params = replace(params, noise_slope=torch.zeros((), dtype=_DTYPE))
    mean_function = MeanFunction(
        kind=mean,
        input_dim=d,
        hidden_units=hidden_units if mean == "mlp" else 0,
        weights={k: v.detach().clone() for k, v in weights.items()},
    )
    return GPPrior(
        distributions=dict(space.distributions),
        fidelity_param=space.fidelity_param,
        target_fidelity=None if not has_fidelity else float(space.target_fidelity),
        params=params,
        heteroscedastic=heteroscedastic,
        mean_function=mean_function,
        y_shift=y_shift,
        y_scale=y_scale,
        fit_info={
            "objective": objective,
            "n_studies": len(data),
            "n_points": n_total,
            "loss": final_loss if math.isfinite(final_loss) else 0.0,
            "study_names": [s.name for s in data],
        },
    )
