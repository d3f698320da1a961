r"""Information-theoretic acquisition functions per unit of expected cost.

Both acquisitions score a candidate ``c = (x, s)`` by the information an observation
``y ~ N(mu(c), var(c) + sigma_n^2(s))`` would bring about the optimum of the objective at the
*target* fidelity ``s = 1``, divided by the expected cost of evaluating ``c``:

.. math::

    \alpha(c) = \frac{I(y; \, \cdot^\star)}{\mathbb{E}[\mathrm{cost}(c)]}.

``"es"`` (entropy search)
    Information about the *location* of the minimizer, ``x* = argmin_x f(x, 1)``, discretized
    over representer points ``Z`` (Hennig & Schuler, "Entropy Search for Information-Efficient
    Global Optimization", JMLR 2012; per unit cost and across fidelities as in Swersky et al.,
    "Multi-Task Bayesian Optimization", NeurIPS 2013, and Klein et al., "Fast Bayesian
    Optimization of Machine Learning Hyperparameters on Large Datasets" (FABOLAS), AISTATS 2017):

    .. math::

        I = H[p_{\min}] - \mathbb{E}_y H[p_{\min} \mid y],\qquad
        p_{\min}(z) = P\left(z = \operatorname{argmin}_{z' \in Z} f(z', 1)\right).

    ``p_min`` is a Monte Carlo histogram of the argmins of joint posterior samples ``f(Z)``
    drawn with fixed base samples (common random numbers). The posterior after a fantasized
    observation is sampled by pathwise conditioning (Matheron's rule, Wilson et al., "Efficiently
    Sampling Functions from Gaussian Process Posteriors", ICML 2020): with ``y_s`` a joint sample
    of the observation, ``f(Z) | y = f(Z) + k(Z, c) / s_y^2 (y - y_s)``, exact for a GP; the
    expectation over ``y`` uses Gauss–Hermite quadrature. The same base samples are reused for
    every candidate and quadrature node, so a candidate that carries no information about
    ``f(Z)`` gets a gain of zero up to round-off.

``"mes"`` (max-value entropy search, the default)
    Information about the *minimum value* ``f* = min_x f(x, 1)``: the multi-fidelity max-value
    entropy search of Takeno et al., "Multi-fidelity Bayesian Optimization with Max-value Entropy
    Search and its Parallelization", ICML 2020. With ``f_1 = f(x, 1)`` and samples of ``f*``,

    .. math::

        I = \mathbb{E}_{f^\star}\left[ H[p(y)] - H[p(y \mid f^\star)] \right],\qquad
        p(y \mid f^\star) = p(y)\, \frac{\Psi(y)}{\Phi(\gamma)},\qquad
        \gamma = \frac{\mu_1 - f^\star}{\sigma_1},\quad
        \Psi(y) = P(f_1 > f^\star \mid y),

    where ``f_1 | y`` is Gaussian from the joint posterior of ``(f(x, s), f(x, 1))``. With
    ``rho`` the correlation of ``y`` and ``f_1`` and ``z`` the standardized ``y``, ``p(y)``
    Gaussian gives ``H[p(y)] - H[p(y | f*)] = KL(p(y | f*) || p(y)) + (1 - E[z^2 | f*]) / 2``,
    and both terms reduce to one-dimensional pieces:

    .. math::

        \mathrm{KL} = \frac{\mathbb{E}_y[\Psi \log \Psi]}{\Phi(\gamma)} - \log \Phi(\gamma),
        \qquad
        \mathbb{E}[z^2 \mid f^\star] = 1 - \rho^2 \frac{\gamma \phi(\gamma)}{\Phi(\gamma)},

    the second from the second moment of a truncated normal. Only ``E_y[Psi log Psi]`` needs
    quadrature (Gauss–Hermite over ``y``); its integrand vanishes where ``Psi`` is 0 or 1, so
    the quadrature stays accurate when ``Psi`` becomes a step (no noise at the target). There
    the gain is the closed form of Wang & Jegelka, "Max-value Entropy Search for Efficient
    Bayesian Optimization" (ICML 2017), ``gamma phi(gamma) / (2 Phi(gamma)) - log Phi(gamma)``.
    One-dimensional quadrature per candidate: much cheaper than ``"es"``.

In a constrained study the optimum is the *constrained* one: the representer points and the
samples of ``f*`` come from the configurations likely to be feasible (:func:`likely_feasible`),
as the constrained max-value entropy searches define ``f*`` (Perrone et al., "Constrained
Bayesian Optimization with Max-Value Entropy Search", arXiv:1910.07003, 2019; Takeno et al.,
ICML 2021), and the gain is weighted by the probability of feasibility
(:func:`weighted_by_feasibility`).

All functions are minimization-oriented: the sampler flips the sign for maximized objectives.
``D`` is the number of model input columns, ``m`` the number of representer points, ``q`` the
number of candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from optuna_isbo.model import CostModel, GPModel

AcquisitionFunc = Callable[[torch.Tensor], torch.Tensor]
"""Maps candidates ``(q, D)`` to acquisition values ``(q,)``."""


def gauss_hermite_normal(n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights for ``E[g(z)]``, ``z ~ N(0, 1)``: ``sum(w * g(nodes))``.

    Returns
    -------
    tuple
        Nodes ``(n_nodes,)`` and weights ``(n_nodes,)`` summing to one.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = torch.from_numpy(weights / weights.sum())
    return torch.from_numpy(nodes), w


def to_target_fidelity(C: torch.Tensor, has_fidelity: bool) -> torch.Tensor:
    """Copy of candidates ``(q, D)`` with the fidelity column set to the target ``s = 1``."""
    if not has_fidelity:
        return C
    C1 = C.clone()
    C1[:, -1] = 1.0
    return C1


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis, with ``0 log 0 = 0``."""
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def pmin_histogram(samples: torch.Tensor) -> torch.Tensor:
    """Monte Carlo ``p_min``: the frequency with which each point is the sample minimum.

    Parameters
    ----------
    samples
        ``(..., n_samples, m)`` joint function samples at ``m`` points.

    Returns
    -------
    torch.Tensor
        ``(..., m)`` probabilities, in ``float64``.
    """
    *batch, n_samples, m = samples.shape
    argmin = samples.min(dim=-1).indices.reshape(-1, n_samples)
    counts = torch.zeros(argmin.shape[0], m, dtype=torch.float64)
    counts.scatter_add_(1, argmin, torch.ones(argmin.shape, dtype=torch.float64))
    return (counts / n_samples).reshape(*batch, m)


def pmin_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``p_min`` estimated from samples, with the Miller–Madow correction.

    The plug-in entropy of a histogram of ``n`` samples is biased low by about
    ``(K - 1) / (2 n)`` for ``K`` occupied bins. Correcting it matters here because the
    information gain is a difference of two entropies whose supports differ in size (a
    fantasized observation concentrates ``p_min``), so the plug-in bias does not cancel.

    Parameters
    ----------
    samples
        ``(..., n_samples, m)`` joint function samples.

    Returns
    -------
    torch.Tensor
        ``(...)`` entropies.
    """
    p = pmin_histogram(samples)
    occupied = (p > 0).sum(-1).to(torch.float64)
    return entropy(p) + (occupied - 1.0) / (2.0 * samples.shape[-2])


@dataclass(frozen=True)
class RepresenterPoints:
    """Where the minimizer at the target fidelity is likely to be.

    Attributes
    ----------
    Z
        ``(m, D)`` representer points at ``s = 1``.
    min_value_samples
        ``(n_thompson,)`` samples of the minimum value ``f*`` (minima of joint posterior samples
        over the candidate pool), used by ``"mes"``.
    """

    Z: torch.Tensor
    min_value_samples: torch.Tensor


def select_representer_points(
    model: GPModel,
    pool: torch.Tensor,
    *,
    n_points: int,
    n_thompson: int,
    generator: torch.Generator,
) -> RepresenterPoints:
    """Pick representer points from a pool of target-fidelity inputs.

    The points are, in order: the distinct minimizers of ``n_thompson`` joint posterior samples
    over the pool (Thompson sampling: where the minimum is likely), then the pool points of
    lowest posterior mean, then random pool points until ``n_points`` are chosen.

    Parameters
    ----------
    model
        Fitted objective GP.
    pool
        ``(p, D)`` candidate inputs at the target fidelity.
    n_points
        Number ``m`` of representer points (at most ``p``).
    n_thompson
        Number of joint posterior samples.
    generator
        Source of randomness.
    """
    eps = torch.randn(n_thompson, pool.shape[0], dtype=pool.dtype, generator=generator)
    samples, mean, _ = model.sample(pool, eps)
    n_points = min(n_points, pool.shape[0])
    chosen: list[int] = []
    seen: set[int] = set()

    def add(indices: torch.Tensor) -> None:
        for i in indices.tolist():
            if len(chosen) >= n_points:
                return
            if i not in seen:
                seen.add(i)
                chosen.append(i)

    ts_argmin = samples.argmin(dim=1)
    counts = torch.bincount(ts_argmin, minlength=pool.shape[0])
    add(torch.argsort(counts, descending=True)[: int((counts > 0).sum())])
    add(torch.argsort(mean)[: max(n_points // 4, 1)])
    add(torch.randperm(pool.shape[0], generator=generator))
    return RepresenterPoints(Z=pool[chosen], min_value_samples=samples.min(dim=1).values)


def entropy_search(
    model: GPModel,
    Z: torch.Tensor,
    *,
    n_samples: int = 256,
    n_quadrature: int = 8,
    chunk_size: int = 64,
    generator: torch.Generator,
) -> tuple[AcquisitionFunc, float]:
    """Build the entropy-search information gain about ``argmin f(., 1)`` over ``Z``.

    Parameters
    ----------
    model
        Fitted objective GP (with pending points already conditioned on).
    Z
        ``(m, D)`` representer points at the target fidelity.
    n_samples
        Monte Carlo samples of ``f(Z)``, fixed for all candidates (common random numbers).
    n_quadrature
        Gauss–Hermite nodes over the fantasized observation.
    chunk_size
        Candidates processed together; bounds memory at about
        ``chunk_size * n_quadrature * n_samples * m`` floats.
    generator
        Source of the base samples.

    Returns
    -------
    tuple
        ``gain(C)``, mapping candidates ``(q, D)`` to the information gain in nats ``(q,)``,
        and the current entropy ``H[p_min]`` in nats.
    """
    m = Z.shape[0]
    eps = torch.randn(n_samples, m, dtype=Z.dtype, generator=generator)
    xi = torch.randn(n_samples, dtype=Z.dtype, generator=generator)
    f_Z, _, chol_Z = model.sample(Z, eps)  # (n_samples, m), (m, m)
    entropy_now = float(pmin_entropy(f_Z))
    # The fantasized samples only feed an argmin: single precision halves memory traffic.
    f_Z32 = f_Z.to(torch.float32)
    nodes, weights = gauss_hermite_normal(n_quadrature)

    def gain(C: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, C.shape[0], chunk_size):
            out.append(_entropy_search_chunk(C[start : start + chunk_size]))
        return torch.cat(out) if out else C.new_zeros(0)

    def _entropy_search_chunk(C: torch.Tensor) -> torch.Tensor:
        k_Zc = model.cov(Z, C)  # (m, q)
        _, var_c = model.mean_var(C)
        sd_y = (var_c + model.noise_var(C)).sqrt()  # (q,)
        # Joint sample of the standardized observation, consistent with f_Z = mu + L eps:
        # y_s = a^T eps + r xi with a = L^{-1} k(Z, c) and r^2 = s_y^2 - |a|^2.
        a = torch.linalg.solve_triangular(chol_Z, k_Zc, upper=False)  # (m, q)
        resid_sd = (sd_y.square() - a.square().sum(0)).clamp_min(0.0).sqrt()  # (q,)
        eta = (eps @ a + xi[:, None] * resid_sd) / sd_y  # (n_samples, q)
        u = (k_Zc / sd_y).T.to(torch.float32).contiguous()  # (q, m)
        shift = (nodes[None, :, None] - eta.T[:, None, :]).to(torch.float32)  # (q, n_quad, n_s)
        # Written into a row-major buffer: the argmin over the last axis then reads memory in
        # order (the broadcast inputs are transposed views, and an output laid out after them
        # makes the reduction several times slower).
        f_post = torch.empty(*shift.shape, Z.shape[0], dtype=torch.float32)
        torch.addcmul(f_Z32, shift[..., None], u[:, None, None, :], out=f_post)
        entropy_after = pmin_entropy(f_post) @ weights  # (q,)
        return (entropy_now - entropy_after).clamp_min(0.0)

    return gain, entropy_now


def max_value_entropy_search(
    model: GPModel,
    min_value_samples: torch.Tensor,
    *,
    n_quadrature: int = 16,
) -> AcquisitionFunc:
    """Build the multi-fidelity max-value entropy gain about ``min f(., 1)``.

    Parameters
    ----------
    model
        Fitted objective GP (with pending points already conditioned on).
    min_value_samples
        ``(k,)`` samples of ``f*``.
    n_quadrature
        Gauss–Hermite nodes over the observation. The integrand is smooth except where the
        candidate's observation nearly determines ``f(x, 1)``; there the rule converges
        slowly whatever the count, and 16 nodes choose the same candidates as 256 do
        (``tests/test_acquisition.py``) at half the cost of 32, the largest term of an ``ask``
        in small studies.

    Returns
    -------
    AcquisitionFunc
        Maps candidates ``(q, D)`` to information gains in nats ``(q,)``.
    """
    nodes, weights = gauss_hermite_normal(n_quadrature)
    f_star = min_value_samples[None, :, None]  # (1, k, 1)

    def gain(C: torch.Tensor) -> torch.Tensor:
        C1 = to_target_fidelity(C, model.has_fidelity)
        index = None
        if model.has_fidelity and not C1.requires_grad:
            # The candidates of one configuration at several fidelities share their target.
            C1, index = torch.unique(C1, dim=0, return_inverse=True)
        var_c, mean_1, var_1, cross = model.paired_moments(C, C1, index)
        var_y = var_c + model.noise_var(C)
        sd_1 = var_1.sqrt()
        gamma = (mean_1[:, None] - min_value_samples) / sd_1[:, None]  # (q, k)
        log_phi_gamma = torch.special.log_ndtr(gamma)
        # f_1 | y at y = mu_y + sd_y z: mean mu_1 + cross / sd_y z, var var_1 - cross^2 / var_y.
        cond_sd = (var_1 - cross.square() / var_y).clamp_min(1e-12).sqrt()
        cond_mean = mean_1[:, None] + (cross / var_y.sqrt())[:, None] * nodes  # (q, n_quad)
        z = (cond_mean[:, None, :] - f_star) / cond_sd[:, None, None]  # (q, k, n_quad)
        log_psi = torch.special.log_ndtr(z)
        # E_y[Psi log Psi] / Phi(gamma), with Psi / Phi(gamma) formed in log space.
        ratio = torch.exp(log_psi - log_phi_gamma[..., None])  # (q, k, n_quad)
        kl = (ratio * log_psi) @ weights - log_phi_gamma  # (q, k)
        # (1 - E[z^2 | f*]) / 2 = rho^2 gamma phi(gamma) / (2 Phi(gamma)), exactly.
        rho_sq = (cross.square() / (var_y * var_1)).clamp(0.0, 1.0)  # (q,)
        log_pdf_gamma = -0.5 * gamma.square() - 0.5 * math.log(2.0 * math.pi)
        mills = torch.exp(log_pdf_gamma - log_phi_gamma)  # phi(gamma) / Phi(gamma)
        second_moment_term = 0.5 * rho_sq[:, None] * gamma * mills  # (q, k)
        return (kl + second_moment_term).mean(-1).clamp_min(0.0)

    return gain


def per_cost(gain: AcquisitionFunc, cost_model: CostModel) -> AcquisitionFunc:
    """Divide an information gain (nats) by the expected cost (seconds): nats per second."""

    def value(C: torch.Tensor) -> torch.Tensor:
        return gain(C) / cost_model.expected_seconds(C)

    return value


def likely_feasible(pool: torch.Tensor, probability: AcquisitionFunc) -> torch.Tensor:
    """The rows of ``pool (p, D)`` feasible with probability at least 1/2, or all of ``pool``.

    ``probability`` maps inputs ``(p, D)`` to ``(p,)`` (pass inputs at the target fidelity).
    Restricting the representer pool to them makes the samples of the minimum those of the
    *constrained* minimum: information about the unconstrained one, which may lie outside the
    feasible region, would draw the search across the boundary (an infeasible trial teaches
    little about the optimum the study can use). While no pool point is likely feasible, the
    whole pool is kept.
    """
    with torch.no_grad():
        likely = probability(pool) >= 0.5
    return pool[likely] if bool(likely.any()) else pool


def weighted_by_feasibility(
    value: AcquisitionFunc,
    probability: AcquisitionFunc,
    has_fidelity: bool,
) -> AcquisitionFunc:
    """Multiply an acquisition by the probability of feasibility at the target fidelity.

    ``probability`` maps inputs ``(q, D)`` to ``(q,)``
    (:meth:`optuna_isbo.constraints.ConstraintModel.probability`); it is evaluated with the
    fidelity column set to the target, since feasibility is asked of the configuration that
    would be run there (Gardner et al., ICML 2014, for the product form).
    """

    def weighted(C: torch.Tensor) -> torch.Tensor:
        return value(C) * probability(to_target_fidelity(C, has_fidelity))

    return weighted
