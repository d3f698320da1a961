"""Gaussian-process surrogates over hyperparameters and fidelity.

Two exact GPs are fitted on every model-based ``ask``:

* the **objective GP** over ``[x, s]`` (``x`` in the unit cube, ``s`` the normalized log
  fidelity, ``s = 1`` the target), with kernel

  .. math::

      k((x, s), (x', s')) = \\sigma^2 \\, k_{5/2}(x, x'; \\ell)
          \\left[1 + \\beta \\, ((1 - s)(1 - s'))^{p}\\right]

  i.e. ``f(x, s) = g_0(x) + \\sqrt{\\beta} (1 - s)^p g_1(x)`` with ``g_0, g_1`` independent
  Matérn-5/2 ARD processes: a low fidelity is a biased version of the target whose bias vanishes
  at ``s = 1`` (the basis-function fidelity kernel of FABOLAS, Klein et al. 2017, with a learned
  exponent). The observation noise may depend on the fidelity,
  ``sigma_n^2(s) = sigma_0^2 exp(gamma (1 - s))`` with ``gamma >= 0``, because importance-sampled
  SGD at a larger super-batch gives lower-variance training runs.

* the **cost GP** on ``log cost_seconds`` over ``[x, s]`` with a plain Matérn-5/2 ARD kernel.
  Its expected cost is the log-normal mean ``exp(mu + var / 2)``.

Hyperparameters are fitted by MAP (log marginal likelihood plus log priors) with L-BFGS-B,
warm-started from the previous fit. The priors follow BoTorch's defaults for standardized
outputs: the dimension-scaled log-normal lengthscale prior of Hvarfner et al., "Vanilla Bayesian
Optimization Performs Great in High Dimensions" (ICML 2024). The noise variance at the target has
Optuna's GPSampler prior, ``Gamma(1.1, rate=30)`` (mean 0.037 of the output variance): its
density falls only as ``(sigma_0^2)^{0.1}`` toward zero, so a noiseless objective is fitted
down to the ``1e-6`` floor. BoTorch's ``LogNormal(-4, 1)`` puts ``sigma_0^2 = 1e-4`` more than
five standard deviations of ``log sigma_0^2`` below its median; on a noiseless function it
keeps a noise of a few percent of the output scale, and the GP can then neither resolve the
last few percent near the optimum nor state a tight interval there.
The fidelity weight ``beta`` has a log-normal prior with median 1 (the fit also starts there):
a priori the cheapest fidelity correlates with the target by ``1 / sqrt(2)``. A prior that
trusted cheap evaluations more lets the fit explain one outlying cheap value through the shared
target component ``g_0`` instead of the bias ``g_1``, and then that value would drive the
posterior mean at the target. Priors are GPyTorch prior objects.

All tensors are ``float64``. ``n`` is the number of training points, ``D`` the number of
feature columns (``d`` hyperparameter columns, plus one fidelity column when present).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.optimize
import torch
from gpytorch.priors import GammaPrior, LogNormalPrior, NormalPrior

from optuna_isbo._blas import single_threaded_blas

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
# Returned to L-BFGS-B at infeasible points: finite, so that the line search backs off.
_INFEASIBLE_LOSS = 1e10

# Bounds of the log hyperparameters, for numerical safety (BoTorch bounds lengthscales below
# by 0.025 for the same reason).
_LOG_LENGTHSCALE_BOUNDS = (math.log(0.025), math.log(100.0))
_LOG_OUTPUTSCALE_BOUNDS = (math.log(0.01), math.log(100.0))
_LOG_NOISE_BOUNDS = (math.log(1e-6), math.log(10.0))
_LOG_BETA_BOUNDS = (math.log(1e-4), math.log(100.0))
_LOG_EXPONENT_BOUNDS = (math.log(0.25), math.log(4.0))
_LOG_NOISE_SLOPE_BOUNDS = (math.log(1e-3), math.log(10.0))
_MEAN_BOUNDS = (-10.0, 10.0)
# Half-width of the window around the median log cost outside which log costs are clipped.
_LOG_COST_WINDOW = math.log(1e4)


class _Matern52(torch.autograd.Function):
    """Matérn-5/2 correlation as a function of the squared scaled distance ``r2``.

    Written as its own autograd function because the derivative through ``sqrt(r2)`` is
    ``0 * inf`` at ``r2 = 0``, while ``dk/d(r2) = -5/6 (1 + sqrt(5) r) exp(-sqrt(5) r)`` is finite.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, r2: torch.Tensor) -> torch.Tensor:
        r = r2.clamp_min(0.0).sqrt()
        exp_term = torch.exp(-_SQRT5 * r)
        ctx.save_for_backward(r, exp_term)
        return (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * exp_term

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        r, exp_term = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (-5.0 / 6.0) * (1.0 + _SQRT5 * r) * exp_term


def matern52(A: torch.Tensor, B: torch.Tensor, lengthscales: torch.Tensor) -> torch.Tensor:
    """Matérn-5/2 ARD correlation matrix.

    Parameters
    ----------
    A, B
        Inputs of shape ``(..., a, k)`` and ``(..., b, k)`` with broadcastable batch shapes.
    lengthscales
        Shape ``(k,)``. With ``k = 0`` the correlation is 1 everywhere.

    Returns
    -------
    torch.Tensor
        Shape ``(..., a, b)``.
    """
    if A.shape[-1] == 0:
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        return A.new_ones(*batch, A.shape[-2], B.shape[-2])
    # ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` on the scaled inputs: one matrix product instead of
    # an ``(a, b, k)`` tensor of differences. The rounding error of the expansion is about
    # ``1e-16 |a|^2`` in ``r^2``, and the Matérn correlation is smooth in ``r^2`` (``1 - 5/6 r^2``
    # near 0), so the correlation is as accurate as from the differences.
    A_scaled = A / lengthscales
    B_scaled = B / lengthscales
    r2 = (
        A_scaled.square().sum(-1)[..., :, None]
        + B_scaled.square().sum(-1)[..., None, :]
        - 2.0 * A_scaled @ B_scaled.transpose(-1, -2)
    )
    out: torch.Tensor = _Matern52.apply(r2.clamp_min(0.0))
    return out


@dataclass(frozen=True)
class GPParams:
    """Hyperparameters of a GP, all in natural (constrained) units.

    Attributes
    ----------
    lengthscales
        ``(d,)`` Matérn lengthscales of the ``x`` columns (of all columns for the cost GP).
    outputscale
        Prior variance ``sigma^2`` of the target-fidelity function.
    noise
        Observation-noise variance ``sigma_0^2`` at the target fidelity.
    mean
        Constant prior mean.
    fidelity_beta, fidelity_exponent
        ``beta`` and ``p`` of the fidelity kernel (ignored when the GP has no fidelity column).
    noise_slope
        ``gamma`` of the noise law (0 for homoscedastic noise).
    """

    lengthscales: torch.Tensor
    outputscale: torch.Tensor
    noise: torch.Tensor
    mean: torch.Tensor
    fidelity_beta: torch.Tensor
    fidelity_exponent: torch.Tensor
    noise_slope: torch.Tensor


def _unpack(theta: torch.Tensor, d: int) -> GPParams:
    """Map the unconstrained vector ``theta`` (shape ``(d + 6,)``) to :class:`GPParams`."""
    return GPParams(
        lengthscales=theta[:d].exp(),
        outputscale=theta[d].exp(),
        noise=theta[d + 1].exp(),
        mean=theta[d + 2],
        fidelity_beta=theta[d + 3].exp(),
        fidelity_exponent=theta[d + 4].exp(),
        noise_slope=theta[d + 5].exp(),
    )


def _pack(params: GPParams) -> torch.Tensor:
    return torch.cat(
        [
            params.lengthscales.log(),
            torch.stack(
                [
                    params.outputscale.log(),
                    params.noise.log(),
                    params.mean,
                    params.fidelity_beta.log(),
                    params.fidelity_exponent.log(),
                    params.noise_slope.log(),
                ]
            ),
        ]
    )


@dataclass(frozen=True)
class _Priors:
    lengthscale: LogNormalPrior
    outputscale: LogNormalPrior
    noise: GammaPrior
    mean: NormalPrior
    fidelity_beta: LogNormalPrior
    fidelity_exponent: LogNormalPrior
    noise_slope: LogNormalPrior


# Medians of the priors on the fidelity kernel's ``beta`` and ``p`` (and where their fits start).
PRIOR_FIDELITY_BETA = 1.0
PRIOR_FIDELITY_EXPONENT = 1.5


def prior_target_correlation(s: torch.Tensor) -> torch.Tensor:
    """Correlation of ``f(x, s)`` with ``f(x, 1)`` under the prior medians of ``beta`` and ``p``.

    From the kernel, ``corr = 1 / sqrt(1 + beta (1 - s)^{2p})``: ``1 / sqrt(2)`` at ``s = 0``
    and 1 at the target. A noiseless observation at ``s`` removes the share ``corr^2`` of the
    prior variance of ``f(x, 1)`` that one at the target removes.

    Parameters
    ----------
    s
        ``(k,)`` unit fidelities in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``(k,)`` correlations.
    """
    bias = PRIOR_FIDELITY_BETA * (1.0 - s).clamp_min(0.0) ** (2.0 * PRIOR_FIDELITY_EXPONENT)
    return (1.0 + bias).rsqrt()


def _default_priors(n_lengthscales: int) -> _Priors:
    def lognormal(loc: float, scale: float) -> LogNormalPrior:
        return LogNormalPrior(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale))

    return _Priors(
        lengthscale=lognormal(math.sqrt(2.0) + 0.5 * math.log(max(n_lengthscales, 1)), 3**0.5),
        outputscale=lognormal(0.0, 1.0),
        noise=GammaPrior(
            torch.tensor(1.1, dtype=torch.float64), torch.tensor(30.0, dtype=torch.float64)
        ),
        mean=NormalPrior(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0)),
        fidelity_beta=lognormal(math.log(PRIOR_FIDELITY_BETA), 1.0),
        fidelity_exponent=lognormal(math.log(PRIOR_FIDELITY_EXPONENT), 0.5),
        noise_slope=lognormal(math.log(1.0), 1.0),
    )


def _initial_params(d: int, priors: _Priors) -> GPParams:
    one = torch.ones((), dtype=torch.float64)
    mode = math.exp(priors.lengthscale.loc.item() - priors.lengthscale.scale.item() ** 2)
    ls0 = min(max(mode, 0.1), 2.0)
    return GPParams(
        lengthscales=torch.full((d,), ls0, dtype=torch.float64),
        outputscale=one.clone(),
        noise=one * 1e-2,
        mean=one * 0.0,
        fidelity_beta=one * PRIOR_FIDELITY_BETA,
        fidelity_exponent=one * PRIOR_FIDELITY_EXPONENT,
        noise_slope=one * 1.0,
    )


@dataclass(frozen=True)
class GPModel:
    """An exact GP conditioned on training data, with its hyperparameters.

    Attributes
    ----------
    X
        ``(n, D)`` training inputs; when ``has_fidelity`` the last column is ``s``.
    y
        ``(n,)`` training targets.
    params
        Hyperparameters.
    has_fidelity
        Whether the last column is a fidelity with the fidelity kernel and noise law.
    heteroscedastic
        Whether the noise variance depends on ``s``.
    chol
        ``(n, n)`` lower Cholesky factor of ``K + diag(noise)``.
    alpha
        ``(n,)`` ``(K + diag(noise))^{-1} (y - m(X))``, ``m`` the prior mean.
    mean_fn
        Optional prior mean function of the inputs, ``(a, D) -> (a,)``, used instead of the
        constant ``params.mean`` (for example a mean pre-trained on related studies by
        :func:`optuna_isbo.meta.fit_prior`). ``None``: the constant mean.
    """

    X: torch.Tensor
    y: torch.Tensor
    params: GPParams
    has_fidelity: bool
    heteroscedastic: bool
    chol: torch.Tensor
    alpha: torch.Tensor
    mean_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    # -- prior -----------------------------------------------------------------------------
    def kernel(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """Prior covariance ``(a, b)`` between inputs ``A (a, D)`` and ``B (b, D)``."""
        return _kernel(A, B, self.params, self.has_fidelity)

    def kernel_diag(self, A: torch.Tensor) -> torch.Tensor:
        """Prior variance ``(a,)`` at inputs ``A (a, D)``."""
        var = self.params.outputscale.expand(A.shape[0])
        if self.has_fidelity:
            phi = _fidelity_basis(A[:, -1], self.params)
            var = var * (1.0 + self.params.fidelity_beta * phi.square())
        return var

    def noise_var(self, A: torch.Tensor) -> torch.Tensor:
        """Observation-noise variance ``(a,)`` at inputs ``A (a, D)``."""
        return _noise_var(A, self.params, self.has_fidelity and self.heteroscedastic)

    def prior_mean(self, A: torch.Tensor) -> torch.Tensor:
        """Prior mean ``(a,)`` at inputs ``A (a, D)``: ``mean_fn(A)``, else ``params.mean``."""
        return _prior_mean(A, self.params, self.mean_fn)

    # -- posterior -------------------------------------------------------------------------
    def mean(self, A: torch.Tensor) -> torch.Tensor:
        """Posterior mean ``(a,)`` of the latent function at ``A (a, D)``."""
        return self.prior_mean(A) + self.kernel(A, self.X) @ self.alpha

    def _solve_lower(self, A: torch.Tensor) -> torch.Tensor:
        """``L^{-1} k(X, A)``, shape ``(n, a)``."""
        return torch.linalg.solve_triangular(self.chol, self.kernel(self.X, A), upper=False)

    def var(self, A: torch.Tensor) -> torch.Tensor:
        """Posterior variance ``(a,)`` of the latent function at ``A (a, D)``."""
        V = self._solve_lower(A)
        return (self.kernel_diag(A) - V.square().sum(0)).clamp_min(1e-12)

    def mean_var(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance ``(a,)`` at ``A (a, D)`` sharing one kernel evaluation."""
        KxA = self.kernel(self.X, A)
        mean = self.prior_mean(A) + KxA.T @ self.alpha
        V = torch.linalg.solve_triangular(self.chol, KxA, upper=False)
        return mean, (self.kernel_diag(A) - V.square().sum(0)).clamp_min(1e-12)

    def paired_moments(
        self, A: torch.Tensor, B: torch.Tensor, b_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior moments of paired rows, sharing the triangular solves.

        Parameters
        ----------
        A
            ``(a, D)`` inputs.
        B
            ``(b, D)`` inputs; row ``b_index[i]`` is paired with ``A[i]``.
        b_index
            ``(a,)`` indices into ``B``; ``None`` pairs row ``i`` with row ``i`` (``b = a``).
            Many rows of ``A`` may share one of ``B`` (several fidelities of one
            configuration paired with its target), which is then solved for once.

        Returns
        -------
        tuple
            ``var(f(A_i))``, ``mean(f(B_j))``, ``var(f(B_j))`` and
            ``Cov[f(A_i), f(B_j)]`` for ``j = b_index[i]``, each ``(a,)``.
        """
        V_a = self._solve_lower(A)
        KxB = self.kernel(self.X, B)
        mean_b = self.prior_mean(B) + KxB.T @ self.alpha
        V_b = torch.linalg.solve_triangular(self.chol, KxB, upper=False)
        var_a = (self.kernel_diag(A) - V_a.square().sum(0)).clamp_min(1e-12)
        var_b = (self.kernel_diag(B) - V_b.square().sum(0)).clamp_min(1e-12)
        if b_index is not None:
            B, V_b = B[b_index], V_b[:, b_index]
            mean_b, var_b = mean_b[b_index], var_b[b_index]
        prior = _paired_kernel(A, B, self.params, self.has_fidelity)
        return var_a, mean_b, var_b, prior - (V_a * V_b).sum(0)

    def cov(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """Posterior covariance ``(a, b)`` of the latent function."""
        return self.kernel(A, B) - self._solve_lower(A).T @ self._solve_lower(B)

    def cross_cov_diag(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """``Cov[f(A_i), f(B_i)]`` for paired rows ``A, B (a, D)``; shape ``(a,)``."""
        prior_diag = _paired_kernel(A, B, self.params, self.has_fidelity)
        return prior_diag - (self._solve_lower(A) * self._solve_lower(B)).sum(0)

    def sample(
        self, A: torch.Tensor, base_samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint posterior samples of the latent function at ``A``.

        Parameters
        ----------
        A
            ``(a, D)`` inputs.
        base_samples
            ``(n_samples, a)`` standard-normal draws (fixed for common random numbers).

        Returns
        -------
        tuple
            Samples ``(n_samples, a)``, the posterior mean ``(a,)`` and the lower Cholesky
            factor ``(a, a)`` of the posterior covariance (with jitter).
        """
        mean = self.mean(A)
        cov = self.cov(A, A)
        chol = _robust_cholesky(cov)
        return mean + base_samples @ chol.T, mean, chol

    def with_pending(
        self, X_pending: torch.Tensor, y_pending: torch.Tensor | None = None
    ) -> GPModel:
        """Condition on pending points, at their posterior mean ("kriging believer").

        The posterior mean is unchanged and the posterior variance near pending points shrinks,
        so an acquisition based on information gain stops proposing them again. With
        ``y_pending`` the points are conditioned on those values instead (the
        hyperparameters stay as fitted).

        Parameters
        ----------
        X_pending
            ``(k, D)`` inputs of running trials.
        y_pending
            ``(k,)`` values at them, in the model's units; the posterior mean when ``None``.
        """
        if X_pending.shape[0] == 0:
            return self
        # The Cholesky factor grows by a block instead of being recomputed: with
        # ``B = L^{-1} K(X, X_p)`` and ``C C^T = K(X_p, X_p) + noise - B^T B``,
        # ``[[L, 0], [B^T, C]]`` factors the joint covariance; ``O(n^2 k)``, not ``O(n^3)``.
        KxP = self.kernel(self.X, X_pending)
        B = torch.linalg.solve_triangular(self.chol, KxP, upper=False)
        K_pp = self.kernel(X_pending, X_pending) + torch.diag(self.noise_var(X_pending) + _JITTER)
        C = _robust_cholesky(K_pp - B.T @ B)
        n, k = self.X.shape[0], X_pending.shape[0]
        chol = self.chol.new_zeros(n + k, n + k)
        chol[:n, :n] = self.chol
        chol[n:, :n] = B.T
        chol[n:, n:] = C
        X = torch.cat([self.X, X_pending])
        if y_pending is None:
            y_pending = self.prior_mean(X_pending) + KxP.T @ self.alpha
        y = torch.cat([self.y, y_pending.to(self.y)])
        resid = y - self.prior_mean(X)
        alpha = torch.cholesky_solve(resid[:, None], chol)[:, 0]
        return replace(self, X=X, y=y, chol=chol, alpha=alpha)


def _prior_mean(
    A: torch.Tensor, params: GPParams, mean_fn: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    if mean_fn is None:
        return params.mean.expand(A.shape[0])
    return mean_fn(A)


def _fidelity_basis(s: torch.Tensor, params: GPParams) -> torch.Tensor:
    return (1.0 - s).clamp_min(0.0).pow(params.fidelity_exponent)


def _kernel(
    A: torch.Tensor, B: torch.Tensor, params: GPParams, has_fidelity: bool
) -> torch.Tensor:
    """Prior covariance ``(..., a, b)`` of inputs ``A (..., a, D)`` and ``B (..., b, D)``.

    ``outputscale * k_x(x, x') * (1 + beta phi(s) phi(s'))`` with the Matérn-5/2 ``k_x`` and
    the fidelity basis ``phi(s) = (1 - s)^p`` when the last column is the fidelity ``s``.
    Leading batch dimensions (several studies at once, :mod:`optuna_isbo.meta`) broadcast.
    """
    if not has_fidelity:
        return params.outputscale * matern52(A, B, params.lengthscales)
    K = matern52(A[..., :-1], B[..., :-1], params.lengthscales)
    return _with_fidelity_factor(K, A[..., -1], B[..., -1], params)


def _with_fidelity_factor(
    K: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor, params: GPParams
) -> torch.Tensor:
    """``outputscale * K * (1 + beta phi(s_a) phi(s_b)^T)`` for a correlation ``K (..., a, b)``."""
    phi_a = _fidelity_basis(s_a, params)
    phi_b = _fidelity_basis(s_b, params)
    return (
        params.outputscale
        * K
        * (1.0 + params.fidelity_beta * phi_a[..., :, None] * phi_b[..., None, :])
    )


def squared_differences(X: torch.Tensor, d: int) -> torch.Tensor:
    """Per-column squared differences ``(n, n, d)`` of the first ``d`` columns of ``X (n, D)``.

    The training inputs do not change while the hyperparameters are fitted, so these are
    computed once per fit; each evaluation of the marginal likelihood then forms the scaled
    squared distances ``r^2 = (X_i - X_j)^2 @ ell^{-2}`` as one matrix-vector product, and
    its gradient with respect to the lengthscales is a contraction of the same tensor (no
    ``(n, n, d)`` intermediate per evaluation).
    """
    X = X[:, :d]
    return (X[:, None, :] - X[None, :, :]).square()


def _train_kernel(
    sq_diffs: torch.Tensor, X: torch.Tensor, params: GPParams, has_fidelity: bool
) -> torch.Tensor:
    """``_kernel(X, X, params, has_fidelity)`` from precomputed :func:`squared_differences`."""
    if sq_diffs.shape[-1] == 0:
        corr = X.new_ones(X.shape[0], X.shape[0])
    else:
        corr = _Matern52.apply(sq_diffs @ params.lengthscales.pow(-2))
    if not has_fidelity:
        return params.outputscale * corr
    return _with_fidelity_factor(corr, X[:, -1], X[:, -1], params)


def _paired_kernel(
    A: torch.Tensor, B: torch.Tensor, params: GPParams, has_fidelity: bool
) -> torch.Tensor:
    """``k(A_i, B_i)`` for paired rows, shape ``(a,)``."""
    cols = A.shape[-1] - 1 if has_fidelity else A.shape[-1]
    if cols == 0:
        corr = A.new_ones(A.shape[0])
    else:
        r2 = ((A[:, :cols] - B[:, :cols]) / params.lengthscales).square().sum(-1)
        corr = _Matern52.apply(r2)
    if not has_fidelity:
        return params.outputscale * corr
    phi = _fidelity_basis(A[:, -1], params) * _fidelity_basis(B[:, -1], params)
    return params.outputscale * corr * (1.0 + params.fidelity_beta * phi)


def _noise_var(A: torch.Tensor, params: GPParams, heteroscedastic: bool) -> torch.Tensor:
    noise = params.noise.expand(A.shape[0])
    if heteroscedastic:
        noise = noise * torch.exp(params.noise_slope * (1.0 - A[:, -1]).clamp_min(0.0))
    return noise


def _robust_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor with increasing jitter until it succeeds."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean().clamp_min(1e-12)
    for exponent in range(-9, 0):
        L, info = torch.linalg.cholesky_ex(cov + (10.0**exponent) * scale * eye)
        if int(info.max()) == 0:
            return L
    raise torch.linalg.LinAlgError("posterior covariance is not positive definite")


def condition(
    X: torch.Tensor,
    y: torch.Tensor,
    params: GPParams,
    has_fidelity: bool,
    heteroscedastic: bool,
    mean_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GPModel:
    """Condition a GP with fixed hyperparameters on data.

    Parameters
    ----------
    X
        ``(n, D)`` inputs.
    y
        ``(n,)`` targets.
    params
        Hyperparameters.
    has_fidelity, heteroscedastic, mean_fn
        See :class:`GPModel`.
    """
    K = _kernel(X, X, params, has_fidelity)
    K = K + torch.diag(_noise_var(X, params, has_fidelity and heteroscedastic) + _JITTER)
    chol = _robust_cholesky(K)
    resid = y - _prior_mean(X, params, mean_fn)
    alpha = torch.cholesky_solve(resid[:, None], chol)[:, 0]
    return GPModel(X, y, params, has_fidelity, heteroscedastic, chol, alpha, mean_fn)


def _neg_log_posterior(
    theta: torch.Tensor,
    X: torch.Tensor,
    sq_diffs: torch.Tensor,
    y: torch.Tensor,
    priors: _Priors,
    has_fidelity: bool,
    heteroscedastic: bool,
    d: int,
) -> torch.Tensor:
    params = _unpack(theta, d)
    K = _train_kernel(sq_diffs, X, params, has_fidelity)
    K = K + torch.diag(_noise_var(X, params, has_fidelity and heteroscedastic) + _JITTER)
    chol, info = torch.linalg.cholesky_ex(K)
    if int(info) != 0:
        return torch.tensor(math.inf, dtype=torch.float64)
    resid = (y - params.mean)[:, None]
    z = torch.linalg.solve_triangular(chol, resid, upper=False)
    log_ml = -0.5 * z.square().sum() - chol.diagonal().log().sum()
    log_prior = (
        priors.lengthscale.log_prob(params.lengthscales).sum()
        + priors.outputscale.log_prob(params.outputscale)
        + priors.noise.log_prob(params.noise)
        + priors.mean.log_prob(params.mean)
    )
    if has_fidelity:
        log_prior = (
            log_prior
            + priors.fidelity_beta.log_prob(params.fidelity_beta)
            + priors.fidelity_exponent.log_prob(params.fidelity_exponent)
        )
        if heteroscedastic:
            log_prior = log_prior + priors.noise_slope.log_prob(params.noise_slope)
    return -(log_ml + log_prior) / X.shape[0]


def minimize_lbfgsb(
    loss_fn: Callable[[torch.Tensor], torch.Tensor | None],
    x0: np.ndarray,
    bounds: Sequence[tuple[float, float]],
    max_iter: int,
) -> tuple[np.ndarray, float]:
    """Minimize a torch loss of one parameter vector with L-BFGS-B on autograd gradients.

    Parameters
    ----------
    loss_fn
        Maps the ``(p,)`` float64 parameter vector to a scalar loss; ``None`` or a non-finite
        loss (a failed Cholesky factorization, say) marks an infeasible point.
    x0
        ``(p,)`` start, clipped into ``bounds``.
    bounds
        ``p`` pairs ``(low, high)``.
    max_iter
        Iteration cap.

    Returns
    -------
    tuple
        The best parameters ``(p,)`` and their loss; the loss is ``inf`` when no feasible point
        was found.
    """
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    def fun(theta_np: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.from_numpy(theta_np).requires_grad_(True)
        loss = loss_fn(theta)
        if loss is None or not torch.isfinite(loss):
            return _INFEASIBLE_LOSS, np.zeros_like(theta_np)
        (grad,) = torch.autograd.grad(loss, theta)
        return float(loss.detach()), grad.numpy()

    with warnings.catch_warnings(), single_threaded_blas():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.optimize.minimize(
            fun,
            np.clip(x0, lo, hi),
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip(lo, hi, strict=True)),
            options={"maxiter": max_iter},
        )
    loss = float(res.fun)
    return res.x, loss if math.isfinite(loss) and loss < _INFEASIBLE_LOSS else math.inf


def tame_outliers(
    y: torch.Tensor, bad: torch.Tensor | None = None, *, min_squeeze: float | None = None
) -> torch.Tensor:
    r"""Values to model, with the bad extremes pulled in: ``(n,)``, minimization.

    One diverged run reported at its actual loss (``1e6`` among errors below 1) would set the
    scale of the standardized values and flatten the GP everywhere else. Values above the
    fence :math:`q_{75} + 5 (q_{75} - q_{25})` of the others are set to the fence (Tukey's
    far-out fence, widened), and the runs marked in ``bad`` (``isbo:diverged``) to the worst
    remaining value: such a run says "at least as bad as anything seen", not how bad. Good
    values are never changed, so the ranking of the best configurations is kept; with fewer
    than 4 values only ``bad`` is applied.

    Parameters
    ----------
    y
        ``(n,)`` finite values (lower is better).
    bad
        ``(n,)`` mask of runs known to have failed, or ``None``.
    min_squeeze
        If given, the fence applies only where the values above it squeeze the others: where
        they make the standard deviation of all the values more than ``min_squeeze`` times
        that of the values below the fence, so that standardizing (as ``GPSampler`` does)
        would press the others into less than ``1 / min_squeeze`` of the unit scale. Honest
        bad values (a poor architecture's error of 0.6 among 0.3s) are then left as they are.
    """
    y = y.to(torch.float64)
    bad = torch.zeros_like(y, dtype=torch.bool) if bad is None else bad
    good = y[~bad]
    if good.numel() >= 4:
        q25, q75 = torch.quantile(good, torch.tensor([0.25, 0.75], dtype=y.dtype))
        fence = q75 + 5.0 * (q75 - q25)
        above = good > fence
        if bool(fence > q75) and bool(above.any()) and _squeezes(good, above, min_squeeze):
            y = torch.minimum(y, fence)
    if bool(bad.any()) and bool((~bad).any()):
        y = torch.where(bad, y[~bad].max(), y)
    return y


def _squeezes(values: torch.Tensor, above: torch.Tensor, min_squeeze: float | None) -> bool:
    """Whether the ``above`` values inflate the standard deviation of ``values`` by more than
    ``min_squeeze`` (always, when it is ``None``)."""
    if min_squeeze is None:
        return True
    below = values[~above]
    spread = float(below.std(correction=0)) if below.numel() > 1 else 0.0
    return float(values.std(correction=0)) > min_squeeze * spread


def loo_log_density(model: GPModel, scale: float = 1.0) -> float:
    r"""Leave-one-out log predictive density of a GP's training values.

    With ``K`` the training covariance plus noise, ``alpha = K^{-1} (y - m(X))`` and
    ``c_i = [K^{-1}]_{ii}``, the prediction of ``y_i`` from the other points has mean
    ``y_i - alpha_i / c_i`` and variance ``1 / c_i`` (Rasmussen and Williams, "Gaussian
    Processes for Machine Learning", 2006, eqs. 5.10-5.12), so that

    .. math::

        \mathrm{LOO} = \sum_i \left[-\tfrac12 \log(2 \pi / c_i)
            - \tfrac12 \alpha_i^2 / c_i\right] - n \log(\mathrm{scale}),

    the hyperparameters held at their fitted values. ``scale`` converts the density to the
    units of the original values when the GP models ``(y - shift) / scale``, so that two GPs
    of the same values in different units can be compared.

    Parameters
    ----------
    model
        The conditioned GP, ``n`` training points.
    scale
        The unit of the GP's values, in the original units.
    """
    n = model.X.shape[0]
    eye = torch.eye(n, dtype=model.chol.dtype)
    inv_chol = torch.linalg.solve_triangular(model.chol, eye, upper=False)
    precision_diag = inv_chol.square().sum(0)
    alpha = model.alpha.detach()
    variance = 1.0 / precision_diag
    terms = -0.5 * torch.log(2.0 * math.pi * variance) - 0.5 * alpha.square() * variance
    return float(terms.sum()) - n * math.log(scale)


def standardize(y: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Standardize values without overflow: ``y = shift + scale * z``.

    The values are divided by their largest magnitude before the mean and the standard
    deviation are taken, so values near the float64 limit (``1e300``) standardize as well as
    values near 1. Values that are all equal (or equal to within round-off) give ``z = 0``.

    Parameters
    ----------
    y
        ``(n,)`` finite values, ``n >= 1``.

    Returns
    -------
    tuple
        ``z`` of shape ``(n,)`` with mean 0 and standard deviation 1 (for ``n > 1`` and
        distinct values), and the floats ``shift`` and ``scale > 0``.

    Raises
    ------
    ValueError
        If ``y`` is empty or holds a non-finite value, or if its standard deviation is not
        representable.
    """
    y = y.to(torch.float64)
    if y.numel() == 0 or not bool(torch.isfinite(y).all()):
        raise ValueError("`y` must be a non-empty tensor of finite values.")
    peak = float(y.abs().max())
    if peak == 0.0:
        return torch.zeros_like(y), 0.0, 1.0
    u = y / peak
    mean = float(u.mean())
    std = float(u.std()) if u.shape[0] > 1 else 0.0
    if not std > 1e-12:
        # All values equal (to round-off): centred values, unit scale in the values' units.
        return torch.zeros_like(y), mean * peak, peak
    scale = std * peak
    if not math.isfinite(scale):
        raise ValueError(
            "The values spread beyond the float64 range (their standard deviation overflows); "
            "rescale the objective."
        )
    return (u - mean) / std, mean * peak, scale


# Observations beyond which the hyperparameters are fitted on a subset (:func:`fit_subset`).
MAX_FIT_POINTS = 300


def fit_subset(y: torch.Tensor, m: int) -> torch.Tensor:
    """Indices ``(min(n, m),)`` of the observations the hyperparameters are fitted on.

    All of them when ``n <= m``. Otherwise the ``m // 4`` lowest values (where the
    acquisition needs the model most: the lengthscales and the noise near the optimum) and
    ``m - m // 4`` of the others evenly spaced in trial order (all fidelities and all
    stages of the study in proportion). Deterministic, so a study's fits are reproducible.

    Parameters
    ----------
    y
        ``(n,)`` targets (lower is better).
    m
        Size of the subset, ``m >= 1``.
    """
    n = y.shape[0]
    if n <= m:
        return torch.arange(n)
    n_best = m // 4
    best = torch.argsort(y, stable=True)[:n_best]
    others = torch.ones(n, dtype=torch.bool)
    others[best] = False
    rest = torch.nonzero(others).squeeze(1)
    spaced = torch.linspace(0, rest.shape[0] - 1, m - n_best, dtype=torch.float64)
    return torch.cat([best, rest[spaced.round().long()]]).sort().values


def fit_gp(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    has_fidelity: bool,
    heteroscedastic: bool = True,
    warm_start: GPParams | None = None,
    max_iter: int = 200,
    max_fit_points: int = MAX_FIT_POINTS,
) -> GPModel:
    """Fit GP hyperparameters by MAP and condition on the data.

    Beyond ``max_fit_points`` observations the hyperparameters are fitted on a subset of them
    (:func:`fit_subset`) and the GP is then conditioned on all of them: a fit costs
    ``O(m^3)`` per marginal-likelihood evaluation instead of ``O(n^3)``, the posterior stays
    exact for the fitted hyperparameters, and a few hundred points already pin a dozen
    hyperparameters down (the subset-of-data estimator; Rasmussen and Williams 2006, 8.3.1).

    Parameters
    ----------
    X
        ``(n, D)`` inputs in the unit cube; with ``has_fidelity`` the last column is ``s``.
    y
        ``(n,)`` targets, preferably standardized.
    has_fidelity
        Use the fidelity kernel (and, with ``heteroscedastic``, the fidelity-dependent noise)
        on the last column; otherwise all columns share one Matérn-5/2 ARD kernel.
    heteroscedastic
        Let the noise variance grow toward low fidelity. Ignored without a fidelity column.
    warm_start
        Hyperparameters of a previous fit on the same columns; the optimizer starts there, which
        typically needs far fewer iterations than a cold start.
    max_iter
        Iteration cap of L-BFGS-B, bounding the fitting time.
    max_fit_points
        Largest number of observations the hyperparameters are fitted on.

    Returns
    -------
    GPModel
        The conditioned GP.
    """
    X = X.to(torch.float64)
    y = y.to(torch.float64)
    subset = fit_subset(y, max_fit_points)
    X_fit, y_fit = X[subset], y[subset]
    d = X.shape[1] - 1 if has_fidelity else X.shape[1]
    priors = _default_priors(X.shape[1])
    use_het = has_fidelity and heteroscedastic

    bounds = (
        [_LOG_LENGTHSCALE_BOUNDS] * d
        + [_LOG_OUTPUTSCALE_BOUNDS, _LOG_NOISE_BOUNDS, _MEAN_BOUNDS]
        + [_LOG_BETA_BOUNDS if has_fidelity else (math.log(0.5), math.log(0.5))]
        + [_LOG_EXPONENT_BOUNDS if has_fidelity else (math.log(1.5), math.log(1.5))]
        + [_LOG_NOISE_SLOPE_BOUNDS if use_het else (math.log(1e-3), math.log(1e-3))]
    )
    # A warm start alone is enough once the data set is large (each new point moves the
    # optimum little); while it is small, a cold start from the prior modes is cheap and guards
    # against being stuck in an early local optimum.
    starts = []
    if warm_start is not None and warm_start.lengthscales.shape[0] == d:
        starts.append(_pack(warm_start))
    if not starts or X_fit.shape[0] < 50:
        starts.append(_pack(_initial_params(d, priors)))
    sq_diffs = squared_differences(X_fit, d)

    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        return _neg_log_posterior(theta, X_fit, sq_diffs, y_fit, priors, has_fidelity, use_het, d)

    best_theta: np.ndarray | None = None
    best_loss = math.inf
    for theta0 in starts:
        theta, loss = minimize_lbfgsb(loss_fn, theta0.detach().numpy(), bounds, max_iter)
        if loss < best_loss:
            best_loss, best_theta = loss, theta
    if best_theta is None:
        best_theta = np.clip(starts[-1].numpy(), lo, hi)
    params = _unpack(torch.from_numpy(best_theta), d)
    if not use_het:
        params = replace(params, noise_slope=torch.zeros((), dtype=torch.float64))
    return condition(X, y, params, has_fidelity, use_het)


@dataclass(frozen=True)
class CostModel:
    """A GP on standardized ``log cost_seconds``.

    Attributes
    ----------
    gp
        GP on ``(log cost_seconds - log_mean) / log_std``.
    log_mean, log_std
        Standardization of the log costs.
    """

    gp: GPModel
    log_mean: float
    log_std: float

    def expected_seconds(self, A: torch.Tensor) -> torch.Tensor:
        """Expected cost in seconds at inputs ``A (a, D)``; shape ``(a,)``.

        Under the GP, ``log cost`` is Gaussian with mean ``mu`` and variance ``v``, so the cost
        is log-normal with mean ``exp(mu + v / 2)``.
        """
        mean, var = self.gp.mean_var(A)
        return torch.exp(self.log_mean + self.log_std * mean + 0.5 * self.log_std**2 * var)


def fit_cost_model(
    X: torch.Tensor,
    cost_seconds: torch.Tensor,
    *,
    warm_start: GPParams | None = None,
    max_iter: int = 200,
) -> CostModel:
    """Fit a GP on ``log cost_seconds`` over all input columns.

    Parameters
    ----------
    X
        ``(n, D)`` inputs (hyperparameters, then the fidelity when there is one).
    cost_seconds
        ``(n,)`` positive finite costs. Log costs further than ``log(1e4)`` from their median
        are clipped to that distance, which bounds the influence of a single absurd cost.
    warm_start, max_iter
        As for :func:`fit_gp`.
    """
    log_cost = cost_seconds.to(torch.float64).log()
    # One wild cost (a hung trial, a unit mistake) must not set the scale of all the others:
    # log costs are clipped to a window around their median.
    median = float(log_cost.median())
    log_cost = log_cost.clamp(median - _LOG_COST_WINDOW, median + _LOG_COST_WINDOW)
    log_mean = float(log_cost.mean())
    log_std = float(log_cost.std()) if log_cost.shape[0] > 1 else 0.0
    log_std = log_std if log_std > 1e-6 else 1.0
    # Beyond ``MAX_FIT_POINTS`` trials the cost GP is conditioned on the fit subset alone
    # (:func:`fit_subset`): the acquisition evaluates it at every candidate, and a few hundred
    # runs pin down a smooth log cost; the objective GP keeps every observation.
    z = (log_cost - log_mean) / log_std
    subset = fit_subset(z, MAX_FIT_POINTS)
    gp = fit_gp(
        X[subset],
        z[subset],
        has_fidelity=False,
        warm_start=warm_start,
        max_iter=max_iter,
    )
    return CostModel(gp=gp, log_mean=log_mean, log_std=log_std)
