"""Cross-checks of :mod:`optuna_isbo.model` and the ``"mes"`` acquisition against GPyTorch/BoTorch.

The package has its own GP and acquisition code; here the same quantities are computed with
GPyTorch's exact GP (through BoTorch's ``SingleTaskGP``) and BoTorch's max-value entropy search
on identical, fixed hyperparameters (nothing is fitted), so any difference is a difference in
the math or its numerics, not in an optimizer.

* Posterior mean, variance and covariance of the objective GP, without a fidelity column
  (``sigma^2`` Matérn-5/2 ARD, constant mean, homoscedastic noise) and with one (the kernel
  ``sigma^2 k_{5/2}(x, x') (1 + beta phi(s) phi(s'))``, ``phi(s) = (1 - s)^p``, built from
  GPyTorch kernels, and the noise ``sigma_0^2 exp(gamma (1 - s))`` as per-point fixed noise).
* The ``"mes"`` information gain against ``qMaxValueEntropy`` and
  ``qMultiFidelityMaxValueEntropy``, on the same samples of the minimum value.

The package minimizes and BoTorch maximizes: the BoTorch models are trained on ``-y`` with
mean ``-m``, and BoTorch's max-value samples are the negated min-value samples ``-f*``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import pytest
import scipy.stats
import torch
from botorch.acquisition.cost_aware import InverseCostWeightedUtility
from botorch.acquisition.max_value_entropy_search import (
    qMaxValueEntropy,
    qMultiFidelityMaxValueEntropy,
)
from botorch.models import SingleTaskGP
from botorch.models.cost import AffineFidelityCostModel
from botorch.posteriors import GPyTorchPosterior
from botorch.sampling.normal import SobolQMCNormalSampler
from gpytorch.kernels import ConstantKernel, Kernel, MaternKernel, ScaleKernel
from gpytorch.likelihoods import _GaussianLikelihoodBase
from gpytorch.likelihoods.noise_models import Noise
from gpytorch.means import ConstantMean
from linear_operator.operators import DiagLinearOperator

from optuna_isbo import model as isbo_model
from optuna_isbo.acquisition import max_value_entropy_search, select_representer_points
from optuna_isbo.model import GPModel, GPParams, condition

DTYPE = torch.float64
# The diagonal jitter that ``condition`` adds to ``K + diag(noise)``; the references add it to
# their training noise so that both sides factor the same matrix.
JITTER = isbo_model._JITTER

# Tolerances of the posterior comparisons. What remains after matching the jitter:
# * float64 round-off of two Cholesky solves, about n * eps * cond(K + N) ~ 14 * 2e-16 * 1e3,
#   i.e. 1e-12 relative here;
# * the package's Cholesky (``model._robust_cholesky``) adds a further 1e-9 * mean(diag) on
#   its first attempt, which moves the posterior by at most 1e-9 * mean(diag) / min(noise),
#   about 4e-8 relative for these hyperparameters (noise >= 0.05, diagonal ~ 2).
# 1e-6 is 25x above the larger of the two and far below any change of the model itself
# (``test_posterior_comparison_detects_small_model_changes``: a 1e-3 relative change of any
# one hyperparameter moves the posterior mean or variance by more than 3e-5).
POSTERIOR_RTOL = 1e-6
POSTERIOR_ATOL = 1e-6  # on O(1) values (outputscale 1.7): the same bound where a value is ~0

# Scrambled-Sobol samples of the observation in BoTorch's MES. BoTorch integrates over y by
# quasi-Monte Carlo; near the noiseless limit the integrand jumps where f_1 | y crosses f*, so
# the error decays about as 1/N instead of the N^{-3/2} of smooth integrands. Measured on these
# problems against a 2e5-point quadrature of the same integral: 1e-2 nats at N = 128,
# 1.3e-3 at N = 1024, 2e-4 at N = 8192 (N * error ~ 1.5), so ~4e-4 at N = 4096.
N_Y_SAMPLES = 4096
BOTORCH_MES_ATOL = 2e-3  # nats: 5x the expected quasi-Monte Carlo error at N_Y_SAMPLES


def _t(value: float | list[float]) -> torch.Tensor:
    return torch.tensor(value, dtype=DTYPE)


def _params(d: int, *, noise: float = 0.05, noise_slope: float = 1.5) -> GPParams:
    return GPParams(
        lengthscales=torch.linspace(0.25, 0.6, d, dtype=DTYPE),
        outputscale=_t(1.7),
        noise=_t(noise),
        mean=_t(0.4),
        fidelity_beta=_t(0.8),
        fidelity_exponent=_t(1.3),
        noise_slope=_t(noise_slope),
    )


def _data(n: int, n_cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, n_cols, dtype=DTYPE, generator=gen)
    y = torch.sin(6.0 * X[:, 0]) + X[:, 1] + 0.1 * torch.randn(n, dtype=DTYPE, generator=gen)
    return X, y


def _reference_noise(X: torch.Tensor, params: GPParams, heteroscedastic: bool) -> torch.Tensor:
    """``sigma_0^2 exp(gamma (1 - s))`` (``s`` the last column), or ``sigma_0^2``, at inputs
    ``X (..., n, D)``; shape ``(..., n)``."""
    noise = params.noise.expand(X.shape[:-1])
    if heteroscedastic:
        noise = noise * torch.exp(params.noise_slope * (1.0 - X[..., -1]))
    return noise


# ---- GPyTorch references ----------------------------------------------------------------


class _FidelityBasisKernel(Kernel):
    """``phi(s) phi(s')`` with ``phi(s) = max(1 - s, 0)^p``: a linear kernel on the feature
    ``phi(s)`` of the single active column ``s``.

    Returned dense, so that GPyTorch's product kernel multiplies it elementwise with the Matérn
    matrix instead of through (jittered) root decompositions of this rank-one factor.
    """

    def __init__(self, exponent: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.exponent = exponent

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: object
    ) -> torch.Tensor:
        phi1 = (1.0 - x1).clamp_min(0.0).pow(self.exponent)  # (..., n1, 1)
        phi2 = (1.0 - x2).clamp_min(0.0).pow(self.exponent)
        if diag:
            return (phi1 * phi2).squeeze(-1)
        return phi1 @ phi2.transpose(-2, -1)


class _InputNoise(Noise):
    """Observation-noise variance as a function of the inputs, for training and test points.

    BoTorch's ``posterior(X, observation_noise=True)`` on a ``FixedNoiseGaussianLikelihood``
    adds the *mean* training noise at every test point, so the fidelity-dependent noise of a
    candidate (which MES needs) is given to GPyTorch as a noise model instead.
    """

    def __init__(self, noise_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.noise_fn = noise_fn

    def forward(self, *params: object, **kwargs: object) -> DiagLinearOperator:
        X = params[0] if torch.is_tensor(params[0]) else params[0][0]  # type: ignore[index]
        return DiagLinearOperator(self.noise_fn(X))


def _gpytorch_kernel(params: GPParams, n_cols: int, has_fidelity: bool) -> Kernel:
    """The package's objective kernel from GPyTorch parts (modules in float64 before the
    hyperparameters are set, so that they are not rounded to float32)."""
    d = n_cols - 1 if has_fidelity else n_cols
    matern = MaternKernel(nu=2.5, ard_num_dims=d, active_dims=tuple(range(d))).to(DTYPE)
    matern.lengthscale = params.lengthscales
    inner: Kernel = matern
    if has_fidelity:
        one = ConstantKernel().to(DTYPE)
        one.constant = _t(1.0)
        bias = ScaleKernel(
            _FidelityBasisKernel(float(params.fidelity_exponent), active_dims=(d,))
        ).to(DTYPE)
        bias.outputscale = params.fidelity_beta
        inner = matern * (one + bias)  # k_x (1 + beta phi phi')
    kernel = ScaleKernel(inner).to(DTYPE)
    kernel.outputscale = params.outputscale
    return kernel


def _botorch_model(
    X: torch.Tensor,
    y: torch.Tensor,
    params: GPParams,
    *,
    has_fidelity: bool,
    heteroscedastic: bool,
    negate: bool = False,
    noise_model: bool = False,
) -> SingleTaskGP:
    """BoTorch ``SingleTaskGP`` with the package's kernel, constant mean and noise.

    ``negate``: model ``-f`` (BoTorch maximizes). ``noise_model``: the noise as a function of
    the inputs (plus the jitter, also at test points) instead of fixed training noise.
    """
    sign = -1.0 if negate else 1.0
    het = has_fidelity and heteroscedastic
    mean = ConstantMean().to(DTYPE)
    mean.constant = sign * params.mean
    train_Yvar = None
    likelihood = None
    if noise_model:
        likelihood = _GaussianLikelihoodBase(
            noise_covar=_InputNoise(lambda A: _reference_noise(A, params, het) + JITTER)
        )
    else:
        train_Yvar = (_reference_noise(X, params, het) + JITTER)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "data not standardized" input warnings
        model = SingleTaskGP(
            X,
            sign * y[:, None],
            train_Yvar=train_Yvar,
            likelihood=likelihood,
            covar_module=_gpytorch_kernel(params, X.shape[1], has_fidelity),
            mean_module=mean,
            outcome_transform=None,
        )
    model.eval()
    return model


# ---- (a) posterior on fixed hyperparameters ---------------------------------------------


def _test_points(X: torch.Tensor, has_fidelity: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.rand(25, X.shape[1], dtype=DTYPE, generator=gen)
    if has_fidelity:
        A[:6, -1] = 1.0  # the target fidelity
        A[6:9, -1] = 0.0  # the cheapest fidelity
    return torch.cat([A, X[:3]])  # and training inputs, where the variance is smallest


def _compare_posteriors(pkg: GPModel, ref: SingleTaskGP, A: torch.Tensor) -> None:
    with torch.no_grad():
        post = ref.posterior(A)
        assert isinstance(post, GPyTorchPosterior)
        ref_mean, ref_var = post.mean[:, 0], post.variance[:, 0]
        ref_cov = post.distribution.covariance_matrix
    mean, var = pkg.mean_var(A)
    torch.testing.assert_close(mean, ref_mean, rtol=POSTERIOR_RTOL, atol=POSTERIOR_ATOL)
    torch.testing.assert_close(var, ref_var, rtol=POSTERIOR_RTOL, atol=POSTERIOR_ATOL)
    torch.testing.assert_close(pkg.var(A), ref_var, rtol=POSTERIOR_RTOL, atol=POSTERIOR_ATOL)
    torch.testing.assert_close(pkg.cov(A, A), ref_cov, rtol=POSTERIOR_RTOL, atol=POSTERIOR_ATOL)


def test_posterior_matches_botorch_without_fidelity() -> None:
    """``outputscale * Matérn-5/2 ARD``, constant mean, homoscedastic noise vs SingleTaskGP
    with ``ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d))`` and fixed noise."""
    X, y = _data(14, 3, seed=0)
    params = _params(3)
    pkg = condition(X, y, params, has_fidelity=False, heteroscedastic=False)
    ref = _botorch_model(X, y, params, has_fidelity=False, heteroscedastic=False)
    A = _test_points(X, has_fidelity=False, seed=1)
    # The prior kernels agree to round-off before any linear algebra.
    torch.testing.assert_close(
        pkg.kernel(A, X), ref.covar_module(A, X).to_dense(), rtol=1e-12, atol=1e-14
    )
    _compare_posteriors(pkg, ref, A)


@pytest.mark.parametrize("heteroscedastic", [False, True])
def test_posterior_matches_gpytorch_with_fidelity(heteroscedastic: bool) -> None:
    """``sigma^2 k_{5/2}(x, x') (1 + beta ((1 - s)(1 - s'))^p)`` vs the GPyTorch kernel
    ``ScaleKernel(Matérn_x * (ConstantKernel + ScaleKernel(phi(s) phi(s'))))`` with per-point
    fixed noise ``sigma_0^2 exp(gamma (1 - s))``; also the paired cross-covariance between a
    fidelity and the target that MES uses."""
    X, y = _data(14, 3, seed=2)
    params = _params(2)
    pkg = condition(X, y, params, has_fidelity=True, heteroscedastic=heteroscedastic)
    ref = _botorch_model(X, y, params, has_fidelity=True, heteroscedastic=heteroscedastic)
    A = _test_points(X, has_fidelity=True, seed=3)
    torch.testing.assert_close(
        pkg.kernel(A, X), ref.covar_module(A, X).to_dense(), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        pkg.noise_var(X), ref.likelihood.noise - JITTER, rtol=1e-12, atol=0.0
    )
    _compare_posteriors(pkg, ref, A)

    A1 = A.clone()
    A1[:, -1] = 1.0
    with torch.no_grad():
        joint_post = ref.posterior(torch.cat([A, A1]))
        assert isinstance(joint_post, GPyTorchPosterior)
        joint = joint_post.distribution.covariance_matrix
    ref_cross = joint[: A.shape[0], A.shape[0] :].diagonal()
    torch.testing.assert_close(
        pkg.cross_cov_diag(A, A1), ref_cross, rtol=POSTERIOR_RTOL, atol=POSTERIOR_ATOL
    )


@pytest.mark.parametrize(
    "field",
    [
        "lengthscales",
        "outputscale",
        "mean",
        "noise",
        "fidelity_beta",
        "fidelity_exponent",
        "noise_slope",
    ],
)
def test_posterior_comparison_detects_small_model_changes(field: str) -> None:
    """The tolerances above are tight enough to see a 1e-3 relative change of any one
    hyperparameter of the reference (so a wrong kernel term could not pass)."""
    X, y = _data(14, 3, seed=2)
    params = _params(2)
    pkg = condition(X, y, params, has_fidelity=True, heteroscedastic=True)
    changed = replace(params, **{field: getattr(params, field) * (1.0 + 1e-3)})
    ref = _botorch_model(X, y, changed, has_fidelity=True, heteroscedastic=True)
    A = _test_points(X, has_fidelity=True, seed=3)
    with pytest.raises(AssertionError):
        _compare_posteriors(pkg, ref, A)


# ---- (b) max-value entropy search --------------------------------------------------------


def _unit_cost() -> InverseCostWeightedUtility:
    # cost = 1 everywhere: compare information gains, not gains per cost.
    return InverseCostWeightedUtility(
        cost_model=AffineFidelityCostModel(fidelity_weights={-1: 0.0}, fixed_cost=1.0)
    )


def _to_target(C: torch.Tensor) -> torch.Tensor:
    C1 = C.clone()
    C1[..., -1] = 1.0
    return C1


def _botorch_mes(
    model: SingleTaskGP, C: torch.Tensor, min_values: torch.Tensor, *, multi_fidelity: bool
) -> torch.Tensor:
    """BoTorch's MES at candidates ``C (q, D)`` on the max-value samples ``-min_values``.

    Max values are drawn at construction (discrete Thompson sampling on a few points); they
    are then replaced by the given samples, and the quasi-Monte Carlo sampler of ``y`` by a
    seeded one with ``N_Y_SAMPLES`` points.
    """
    k = min_values.shape[0]
    acq: qMaxValueEntropy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if multi_fidelity:
            acq = qMultiFidelityMaxValueEntropy(
                model,
                C[:4],
                num_mv_samples=k,
                num_y_samples=N_Y_SAMPLES,
                use_gumbel=False,
                project=_to_target,
                cost_aware_utility=_unit_cost(),
            )
        else:
            acq = qMaxValueEntropy(
                model, C[:4], num_mv_samples=k, num_y_samples=N_Y_SAMPLES, use_gumbel=False
            )
    acq.posterior_max_values = (-min_values)[:, None]  # (num_mv_samples, 1)
    acq.sampler = SobolQMCNormalSampler(sample_shape=torch.Size([N_Y_SAMPLES]), seed=0)
    with torch.no_grad():
        return acq(C[:, None, :])


def _wang_jegelka(model: GPModel, C: torch.Tensor, min_values: torch.Tensor) -> torch.Tensor:
    """``mean over f* of gamma phi(gamma) / (2 Phi(gamma)) - log Phi(gamma)`` at ``C``, with
    ``gamma = (mu(c) - f*) / sigma(c)`` (minimization form)."""
    mean, var = model.mean_var(C)
    gamma = ((mean[:, None] - min_values) / var.sqrt()[:, None]).numpy()
    values = gamma * scipy.stats.norm.pdf(gamma) / (2.0 * scipy.stats.norm.cdf(gamma))
    values = values - scipy.stats.norm.logcdf(gamma)
    return torch.from_numpy(values.mean(axis=1))


def _mes_problem(
    *, has_fidelity: bool, noise: float, seed: int
) -> tuple[GPModel, SingleTaskGP, torch.Tensor, torch.Tensor]:
    """A conditioned package GP, its BoTorch twin on ``-y``, candidates and f* samples.

    The f* samples are the package's own: minima of joint posterior samples over a pool at the
    target fidelity. Half of the candidates are at the target fidelity when there is one.
    """
    gen = torch.Generator().manual_seed(seed)
    n_cols = 3
    X, y = _data(10, n_cols, seed=seed)
    params = _params(n_cols - 1 if has_fidelity else n_cols, noise=noise)
    pkg = condition(X, y, params, has_fidelity=has_fidelity, heteroscedastic=has_fidelity)
    ref = _botorch_model(
        X,
        y,
        params,
        has_fidelity=has_fidelity,
        heteroscedastic=has_fidelity,
        negate=True,
        noise_model=True,
    )
    pool = torch.rand(128, n_cols, dtype=DTYPE, generator=gen)
    if has_fidelity:
        pool[:, -1] = 1.0
    f_star = select_representer_points(
        pkg, pool, n_points=8, n_thompson=12, generator=gen
    ).min_value_samples
    C = torch.rand(8, n_cols, dtype=DTYPE, generator=gen)
    if has_fidelity:
        C[:4, -1] = 1.0
    return pkg, ref, C, f_star


@pytest.mark.parametrize("has_fidelity", [False, True])
def test_botorch_mes_reduces_to_wang_jegelka_at_noiseless_target(has_fidelity: bool) -> None:
    """Checks the reference: at ``s = 1`` with noise-free observations (only the 1e-8 jitter,
    which moves the closed form by ~sqrt(1e-8 / var) ~ 1e-4 relative) BoTorch's MES is the
    Wang & Jegelka closed form, averaged over the same f* samples, up to its quasi-Monte Carlo
    error. ``qMaxValueEntropy`` without a fidelity column, ``qMultiFidelityMaxValueEntropy``
    (projection to ``s = 1``, unit cost) with one."""
    pkg, ref, C, f_star = _mes_problem(has_fidelity=has_fidelity, noise=0.0, seed=5)
    C = _to_target(C) if has_fidelity else C
    closed_form = _wang_jegelka(pkg, C, f_star)
    assert float(closed_form.max()) > 0.05  # informative candidates among them
    botorch = _botorch_mes(ref, C, f_star, multi_fidelity=has_fidelity)
    torch.testing.assert_close(botorch, closed_form, rtol=0.0, atol=BOTORCH_MES_ATOL)


@pytest.mark.parametrize("has_fidelity", [False, True])
def test_mes_matches_wang_jegelka_at_noiseless_target(has_fidelity: bool) -> None:
    """The package's docstring: "At the target fidelity without noise this is the closed form
    of Wang & Jegelka". The closed form is exact here, so the only allowed difference is the
    package's quadrature of ``E_y[Psi log Psi]``, whose integrand vanishes wherever the step
    ``Psi`` is 0 or 1: at most 1e-3 nats."""
    pkg, _, C, f_star = _mes_problem(has_fidelity=has_fidelity, noise=0.0, seed=5)
    C = _to_target(C) if has_fidelity else C
    gain = max_value_entropy_search(pkg, f_star)(C)
    torch.testing.assert_close(gain, _wang_jegelka(pkg, C, f_star), rtol=0.0, atol=1e-3)


@pytest.mark.parametrize("has_fidelity", [False, True])
def test_mes_matches_botorch_when_noisy(has_fidelity: bool) -> None:
    """Both compute ``I = E_{f*}[H[p(y)] - H[p(y | f*)]]`` with the truncation
    ``p(y | f*) = p(y) P(f_1 > f* | y) / P(f_1 > f*)`` of Takeno et al. (2020), for any noise
    and fidelity: BoTorch by quasi-Monte Carlo over ``y`` (with a control variate), the package
    by Gauss-Hermite quadrature. With observation noise (sigma_0^2 = 0.1, growing to
    0.1 e^1.5 at s = 0) ``P(f_1 > f* | y)`` is smooth in ``y`` and the quadrature error is
    negligible (< 1e-4 nats), so the tolerance is BoTorch's. Candidates at low fidelities and
    at the target, with the fidelity-dependent noise."""
    pkg, ref, C, f_star = _mes_problem(has_fidelity=has_fidelity, noise=0.1, seed=6)
    gain = max_value_entropy_search(pkg, f_star)(C)
    assert float(gain.max()) > 0.05
    botorch = _botorch_mes(ref, C, f_star, multi_fidelity=has_fidelity)
    torch.testing.assert_close(gain, botorch, rtol=0.0, atol=BOTORCH_MES_ATOL)
