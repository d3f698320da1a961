"""Tests of the information-gain acquisitions in :mod:`optuna_isbo.acquisition`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from optuna_isbo.acquisition import (
    entropy,
    entropy_search,
    gauss_hermite_normal,
    max_value_entropy_search,
    per_cost,
    pmin_entropy,
    pmin_histogram,
)
from optuna_isbo.model import GPModel, GPParams, condition, fit_cost_model


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _params(noise: float, lengthscale: float = 0.15) -> GPParams:
    return GPParams(
        lengthscales=torch.tensor([lengthscale], dtype=torch.float64),
        outputscale=_t(1.0),
        noise=_t(noise),
        mean=_t(0.0),
        fidelity_beta=_t(0.5),
        fidelity_exponent=_t(1.5),
        noise_slope=_t(1.0),
    )


def _model(noise: float = 1e-4, heteroscedastic: bool = True) -> GPModel:
    """1-D model with a fidelity column; data at s = 1, heavily replicated at x = 0.5."""
    x = torch.tensor([0.1, 0.3, 0.7, 0.9] + [0.5] * 50, dtype=torch.float64)
    X = torch.stack([x, torch.ones_like(x)], dim=1)
    y = 4.0 * (x - 0.45).square()  # minimum between the data at 0.3 and 0.5
    return condition(X, y, _params(noise), has_fidelity=True, heteroscedastic=heteroscedastic)


def _points(x: list[float], s: float = 1.0) -> torch.Tensor:
    xs = torch.tensor(x, dtype=torch.float64)
    return torch.stack([xs, torch.full_like(xs, s)], dim=1)


Z = _points([0.2, 0.4, 0.45, 0.5, 0.55, 0.6, 0.8])


def test_entropy_search_gain_non_negative_and_zero_where_certain() -> None:
    model = _model()
    gain, entropy_now = entropy_search(model, Z, generator=torch.Generator().manual_seed(0))
    assert 0.0 < entropy_now <= math.log(Z.shape[0]) + Z.shape[0] / (2 * 256)
    gen = torch.Generator().manual_seed(1)
    C = torch.rand(40, 2, dtype=torch.float64, generator=gen)
    values = gain(C)
    assert values.shape == (40,)
    assert (values >= 0.0).all()
    # Far from every representer point, k(Z, c) = exp(-sqrt(5) * 100 / 0.15) underflows in
    # float32, so the fantasized samples equal the current ones and the gain is 0 up to the
    # round-off of the entropies (one float64 ulp of entropy_now, about 1e-16).
    far = gain(_points([100.0, -100.0]))
    assert (far < 1e-12).all()
    # At x = 0.5, 50 replicates with noise 1e-4 leave a posterior sd of about
    # sqrt(1e-4 / 50) = 1.4e-3: one more observation there tells almost nothing.
    certain = gain(_points([0.5]))
    uncertain = gain(_points([0.4]))
    assert float(certain) < 0.05 * float(uncertain)
    assert float(uncertain) > 0.05  # nats


def test_entropy_search_prefers_higher_variance_near_representers() -> None:
    model = _model()
    gain, _ = entropy_search(model, Z, generator=torch.Generator().manual_seed(0))
    C = _points([0.4, 0.3, 0.5])  # untrained, trained once, trained 50 times
    var = model.var(C)
    assert var[0] > var[1] > var[2]
    values = gain(C)
    assert values[0] > values[1] > values[2]


def test_entropy_search_chunks_agree() -> None:
    model = _model()
    C = torch.rand(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g1, _ = entropy_search(model, Z, chunk_size=3, generator=torch.Generator().manual_seed(5))
    g2, _ = entropy_search(model, Z, chunk_size=64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(g1(C), g2(C))


def test_per_cost_prefers_cheaper_fidelity_at_equal_gain() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, dtype=torch.float64, generator=gen)
    cost_model = fit_cost_model(X, 3.0 * torch.exp(2.0 * X[:, 1]))

    def constant_gain(C: torch.Tensor) -> torch.Tensor:
        return torch.full((C.shape[0],), 0.7, dtype=torch.float64)

    acq = per_cost(constant_gain, cost_model)
    s = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    C = torch.stack([torch.full_like(s, 0.4), s], dim=1)
    values = acq(C)
    assert (values[:-1] > values[1:]).all()
    assert torch.allclose(values, 0.7 / cost_model.expected_seconds(C))


def _exact_pmin(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``P(argmin f = i)`` for ``f ~ N(mean, cov)`` by numerical integration.

    ``f_i`` is the minimum iff every ``f_j - f_i`` (j != i) is positive: an orthant probability
    of the Gaussian vector of differences, computed by scipy's multivariate normal CDF.
    """
    m = mean.shape[0]
    p = np.empty(m)
    for i in range(m):
        D = np.delete(np.eye(m), i, axis=0) - np.eye(m)[i]  # rows e_j - e_i
        d_mean, d_cov = D @ mean, D @ cov @ D.T
        # P(D f > 0) = P(-D f < 0).
        p[i] = scipy.stats.multivariate_normal(mean=-d_mean, cov=d_cov, abseps=1e-8).cdf(
            np.zeros(m - 1)
        )
    return p


def test_pmin_histogram_and_entropy_match_exact_reference() -> None:
    mean = np.array([0.0, 0.2, 0.1])
    cov = np.array([[1.0, 0.6, 0.2], [0.6, 0.8, 0.3], [0.2, 0.3, 0.5]])
    p_exact = _exact_pmin(mean, cov)
    assert p_exact.sum() == pytest.approx(1.0, abs=1e-6)
    n = 40000
    L = np.linalg.cholesky(cov)
    eps = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    samples = torch.from_numpy(mean) + eps @ torch.from_numpy(L).T
    p_mc = pmin_histogram(samples).numpy()
    # Each frequency is binomial: standard error sqrt(p (1 - p) / n); allow 4 of them.
    se = np.sqrt(p_exact * (1.0 - p_exact) / n)
    assert np.all(np.abs(p_mc - p_exact) < 4.0 * se)
    # The entropy estimate has standard error sqrt(Var[log p_I] / n) (delta method), with the
    # O(1/n) plug-in bias removed by the Miller–Madow term.
    h_exact = float(-(p_exact * np.log(p_exact)).sum())
    var_log = float((p_exact * np.log(p_exact) ** 2).sum() - h_exact**2)
    assert float(pmin_entropy(samples)) == pytest.approx(h_exact, abs=4.0 * math.sqrt(var_log / n))
    # Batched input gives one histogram per batch element.
    batched = pmin_histogram(samples.reshape(4, n // 4, 3))
    assert batched.shape == (4, 3)
    assert torch.allclose(batched.mean(0), torch.from_numpy(p_mc))


def test_entropy_of_distribution() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(entropy(p), torch.tensor([math.log(2.0), 0.0], dtype=torch.float64))


@pytest.mark.parametrize("n_nodes", [1, 4, 8, 32])
def test_gauss_hermite_normal_exact_up_to_degree_2n_minus_1(n_nodes: int) -> None:
    nodes, weights = gauss_hermite_normal(n_nodes)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)

    def moment(k: int) -> float:  # E[z^k] = (k - 1)!! for even k, 0 for odd k
        return 0.0 if k % 2 else float(math.prod(range(k - 1, 0, -2)))

    for k in range(2 * n_nodes):
        terms = weights * nodes**k
        # Round-off of the sum is ~1e-16 * sum(|terms|) (large for high odd degrees, where big
        # terms cancel); allow 1e-12 of that scale.
        scale = float(terms.abs().sum())
        assert float(terms.sum()) == pytest.approx(moment(k), abs=1e-12 * scale)
    # Degree 2n is not exact: the error of an n-node Gauss rule on z^{2n} is the squared norm of
    # the monic orthogonal polynomial He_n, E[He_n(z)^2] = n!.
    terms = weights * nodes ** (2 * n_nodes)
    error = moment(2 * n_nodes) - float(terms.sum())
    assert error == pytest.approx(math.factorial(n_nodes), abs=1e-12 * float(terms.sum()))


def test_mes_gain_non_negative_and_zero_when_uncorrelated() -> None:
    model = _model(noise=1e-2)
    f_star = torch.tensor([-1.2, -1.1, -1.05], dtype=torch.float64)
    gain = max_value_entropy_search(model, f_star)
    gen = torch.Generator().manual_seed(0)
    values = gain(torch.rand(50, 2, dtype=torch.float64, generator=gen))
    assert (values >= 0.0).all()
    assert (values > 0.0).any()
    # A candidate at the heavily replicated point x = 0.5 is nearly certain.
    assert float(gain(_points([0.5]))) < 1e-3 * float(values.max())


def _mes_reference(mu1: float, sd1: float, cross: float, var_y: float, f_star: float) -> float:
    """``H[p(y)] - H[p(y | f*)]`` by adaptive quadrature over ``y = mu_y + sqrt(var_y) z``.

    With ``r(z) = p(y | f*) / p(y) = Psi(y) / Phi(gamma)`` and Gaussian ``p(y)``, the entropy
    difference is ``E_p[r log r] + (1 - E_p[r z^2]) / 2``.
    """
    cond_sd = math.sqrt(sd1**2 - cross**2 / var_y)
    log_phi_gamma = scipy.stats.norm.logcdf((mu1 - f_star) / sd1)

    def integrand(z: float) -> float:
        cond_mean = mu1 + cross / math.sqrt(var_y) * z
        log_ratio = scipy.stats.norm.logcdf((cond_mean - f_star) / cond_sd) - log_phi_gamma
        ratio = math.exp(log_ratio)
        return float(scipy.stats.norm.pdf(z) * (ratio * log_ratio - 0.5 * ratio * z * z))

    return 0.5 + float(scipy.integrate.quad(integrand, -12.0, 12.0, limit=200)[0])


def _mes_expected(model: GPModel, C: torch.Tensor, f_star: torch.Tensor) -> torch.Tensor:
    C1 = C.clone()
    C1[:, -1] = 1.0
    mu1, var1 = model.mean_var(C1)
    _, var_c = model.mean_var(C)
    cross = model.cross_cov_diag(C, C1)
    var_y = var_c + model.noise_var(C)
    expected = [
        np.mean(
            [
                _mes_reference(
                    float(mu1[i]), float(var1[i].sqrt()), float(cross[i]), float(var_y[i]), fs
                )
                for fs in f_star.tolist()
            ]
        )
        for i in range(C.shape[0])
    ]
    return torch.tensor(expected, dtype=torch.float64)


@pytest.mark.parametrize("s", [0.3, 1.0])
def test_mes_matches_reference_integral(s: float) -> None:
    model = _model(noise=5e-2)
    f_star = torch.tensor([-0.3, -0.1], dtype=torch.float64)
    gain = max_value_entropy_search(model, f_star, n_quadrature=32)
    C = _points([0.35, 0.65], s=s)
    expected = _mes_expected(model, C, f_star)
    assert (expected > 0.0).all()
    # With observation noise comparable to the posterior sd the integrand is smooth, so
    # 32-node Gauss-Hermite is accurate far beyond 1e-3 relative.
    assert torch.allclose(gain(C), expected, rtol=1e-3)


def test_mes_reference_reduces_to_wang_jegelka_without_noise() -> None:
    """At ``s = 1`` without noise the entropy difference has the closed form of Wang & Jegelka
    (2017), ``gamma phi(gamma) / (2 Phi(gamma)) - log Phi(gamma)``: the reference integral used
    above, evaluated with tiny noise, must reproduce it (checks the reference, hence the
    formula the package implements)."""
    mu1, sd1, f_star = 0.2, 0.5, -0.3
    gamma = (mu1 - f_star) / sd1
    closed = gamma * scipy.stats.norm.pdf(gamma) / (2.0 * scipy.stats.norm.cdf(gamma)) - (
        scipy.stats.norm.logcdf(gamma)
    )
    var_y = sd1**2 + 1e-12
    assert _mes_reference(mu1, sd1, sd1**2, var_y, f_star) == pytest.approx(closed, rel=1e-4)


def test_mes_default_quadrature_chooses_what_a_fine_rule_chooses() -> None:
    """The default Gauss-Hermite rule (16 nodes) must pick a candidate whose gain under a
    256-node rule is within 2 % of the best: the acquisition is maximized, so what matters is
    the choice, and the error of a coarse rule is largest exactly where the gain is small
    (observations that nearly determine the target value)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(80, 4, dtype=torch.float64, generator=gen)
    s = torch.rand(80, 1, dtype=torch.float64, generator=gen)
    y = ((X - 0.3) ** 2).sum(1) + (1 - s[:, 0]) * torch.sin(5 * X[:, 0])
    from optuna_isbo.model import fit_gp

    model = fit_gp(torch.cat([X, s], 1), (y - y.mean()) / y.std(), has_fidelity=True)
    pool = torch.cat(
        [torch.rand(300, 4, dtype=torch.float64, generator=gen), X.new_ones(300, 1)], 1
    )
    from optuna_isbo.acquisition import select_representer_points

    f_star = select_representer_points(
        model, pool, n_points=50, n_thompson=64, generator=gen
    ).min_value_samples
    C = torch.rand(2000, 5, dtype=torch.float64, generator=gen)
    fine = max_value_entropy_search(model, f_star, n_quadrature=256)(C)
    default = max_value_entropy_search(model, f_star)(C)
    assert float(fine[default.argmax()]) >= 0.98 * float(fine.max())
