"""Maximizing an acquisition function over the mixed search space and the fidelity axis.

The acquisition functions of :mod:`optuna_isbo.acquisition` are Monte Carlo estimates that are
piecewise constant in the candidate (argmin histograms), so the optimizer is derivative-free
and batched:

1. **Global stage.** Scrambled Sobol points of the search space plus the given seed points
   (good configurations so far) and perturbations of them, each paired with every fidelity of
   the grid: ``n_x * n_fidelities`` candidates scored in one batch.
2. **Local stage.** For a few rounds with shrinking step size, the best ``n_keep`` candidates
   are perturbed: Gaussian steps on numerical columns (then snapped onto the grid of discrete
   parameters), occasional resampling of a categorical, and a move to the neighbouring fidelity.
   Perturbed candidates replace incumbents only when they score higher.
3. **Gradient stage** (differentiable acquisitions only, such as ``"mes"``). The best
   ``n_refine`` candidates are refined by L-BFGS-B on autograd gradients over the columns of
   continuous parameters, in ``[0, 1]``, the other columns and the fidelity held fixed
   (:func:`refine_continuous`). Random steps rarely land exactly on an optimum, least of all on
   one at the boundary of the box, which bounded L-BFGS-B reaches exactly.

Every candidate is snapped by :meth:`SearchSpace.snap`, so the result decodes to valid values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optuna_isbo.acquisition import AcquisitionFunc
from optuna_isbo.model import minimize_lbfgsb
from optuna_isbo.search_space import SearchSpace


@dataclass(frozen=True)
class Candidate:
    """The maximizer found.

    Attributes
    ----------
    x
        ``(dim,)`` encoded hyperparameters.
    s
        Normalized log fidelity (1.0 without a fidelity axis).
    value
        Acquisition value.
    """

    x: torch.Tensor
    s: float
    value: float


def perturb(
    X: torch.Tensor,
    space: SearchSpace,
    *,
    step: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random local moves of encoded points.

    Parameters
    ----------
    X
        ``(n, dim)`` encoded points.
    space
        The search space (for its categorical blocks and snapping).
    step
        Standard deviation of the Gaussian step on numerical columns, in unit-cube units. Each
        categorical is resampled uniformly with probability ``min(1, 2 * step)``.
    generator
        Source of randomness.

    Returns
    -------
    torch.Tensor
        ``(n, dim)`` snapped points.
    """
    X_new = X.clone()
    numerical = torch.ones(space.dim, dtype=torch.bool)
    for block in space.categorical_slices:
        numerical[block] = False
    noise = torch.randn(X.shape, dtype=X.dtype, generator=generator) * step
    X_new[:, numerical] = (X_new[:, numerical] + noise[:, numerical]).clamp(0.0, 1.0)
    for block in space.categorical_slices:
        width = block.stop - block.start
        resample = torch.rand(X.shape[0], generator=generator) < min(1.0, 2.0 * step)
        if bool(resample.any()):
            choice = torch.randint(width, (int(resample.sum()),), generator=generator)
            one_hot = torch.nn.functional.one_hot(choice, width).to(X.dtype)
            X_new[resample, block] = one_hot
    return space.snap(X_new)


def _with_fidelity(X: torch.Tensor, s: torch.Tensor, has_fidelity: bool) -> torch.Tensor:
    return torch.cat([X, s[:, None]], dim=1) if has_fidelity else X


def refine_continuous(
    acquisition: AcquisitionFunc,
    space: SearchSpace,
    X: torch.Tensor,
    s: torch.Tensor,
    *,
    max_iter: int = 15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine candidates by L-BFGS-B over their continuous columns.

    The ``k`` candidates are independent, so one L-BFGS-B run on the sum of their values
    follows each candidate's own gradient. The objective is scaled by the initial sum, so that
    the acquisition's units (nats per second can be tiny) do not stop the run early.

    Parameters
    ----------
    acquisition
        A differentiable acquisition: model inputs ``(k, D)`` to values ``(k,)``.
    space
        The search space; :attr:`SearchSpace.continuous_mask` says which columns move.
    X
        ``(k, dim)`` encoded candidates.
    s
        ``(k,)`` their fidelities (ignored without a fidelity axis).
    max_iter
        L-BFGS-B iterations.

    Returns
    -------
    tuple
        ``(k, dim)`` candidates and their ``(k,)`` values; a candidate that did not improve is
        returned unchanged.
    """
    has_fidelity = space.fidelity_param is not None
    columns = torch.nonzero(space.continuous_mask).flatten()
    with torch.no_grad():
        values = acquisition(_with_fidelity(X, s, has_fidelity))
    if columns.numel() == 0 or X.shape[0] == 0:
        return X, values
    scale = float(values.abs().sum().clamp_min(1e-300))

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        X_new = X.clone()
        X_new[:, columns] = z.view(X.shape[0], -1)
        return -acquisition(_with_fidelity(X_new, s, has_fidelity)).sum() / scale

    z0 = X[:, columns].reshape(-1).numpy()
    z, _ = minimize_lbfgsb(loss_fn, z0, [(0.0, 1.0)] * z0.shape[0], max_iter)
    X_new = X.clone()
    X_new[:, columns] = torch.from_numpy(z).view(X.shape[0], -1).to(X.dtype)
    X_new = space.snap(X_new)
    with torch.no_grad():
        new_values = acquisition(_with_fidelity(X_new, s, has_fidelity))
    better = new_values > values
    return torch.where(better[:, None], X_new, X), torch.where(better, new_values, values)


def maximize_acquisition(
    acquisition: AcquisitionFunc,
    space: SearchSpace,
    *,
    fidelity_grid: torch.Tensor,
    seed_points: torch.Tensor,
    generator: torch.Generator,
    sobol_seed: int,
    n_sobol: int = 256,
    n_keep: int = 8,
    n_local: int = 16,
    local_steps: tuple[float, ...] = (0.1, 0.03, 0.01),
    n_refine: int = 0,
) -> Candidate:
    """Find a high-scoring candidate ``(x, s)``.

    Parameters
    ----------
    acquisition
        Maps model inputs ``(q, D)`` (``x`` columns, then ``s`` when the space has a fidelity
        axis) to values ``(q,)``; larger is better.
    space
        The encoded search space.
    fidelity_grid
        ``(k,)`` increasing fidelities ``s`` to consider; ignored without a fidelity axis.
    seed_points
        ``(p, dim)`` encoded points to start the local search from, such as the configurations
        with the lowest posterior mean.
    generator
        Source of randomness.
    sobol_seed
        Scrambling seed of the Sobol points.
    n_sobol
        Number of Sobol points of the global stage.
    n_keep
        Number of incumbents refined in the local stage.
    n_local
        Perturbations per incumbent and round.
    local_steps
        Step sizes of the successive local rounds.
    n_refine
        Number of the best candidates refined by gradients at the end
        (:func:`refine_continuous`); 0 for acquisitions without useful gradients (``"es"`` is
        piecewise constant in the candidate).

    Returns
    -------
    Candidate
        The best candidate found.
    """
    has_fidelity = space.fidelity_param is not None
    grid = fidelity_grid.to(torch.float64) if has_fidelity else torch.ones(1, dtype=torch.float64)

    X0 = space.sample_sobol(n_sobol, seed=sobol_seed) if space.dim > 0 else torch.zeros(1, 0)
    if seed_points.shape[0] > 0 and space.dim > 0:
        moved = perturb(seed_points.repeat(4, 1), space, step=local_steps[0], generator=generator)
        X0 = torch.cat([X0, seed_points, moved])
    X0 = X0.to(torch.float64)
    if space.dim > 0:
        X0 = torch.unique(X0, dim=0)
    X_all = X0.repeat(grid.shape[0], 1)
    s_all = grid.repeat_interleave(X0.shape[0])
    values = acquisition(_with_fidelity(X_all, s_all, has_fidelity))

    keep = torch.argsort(values, descending=True)[:n_keep]
    best_X, best_s, best_v = X_all[keep], s_all[keep], values[keep]
    if space.dim > 0 or grid.shape[0] > 1:
        for step in local_steps:
            X_new = perturb(
                best_X.repeat_interleave(n_local, 0), space, step=step, generator=generator
            )
            s_new = best_s.repeat_interleave(n_local)
            if grid.shape[0] > 1:
                # Let a quarter of the moves also change the fidelity by one grid level.
                level = torch.searchsorted(grid, s_new).clamp(0, grid.shape[0] - 1)
                delta = torch.randint(-1, 2, level.shape, generator=generator)
                move = torch.rand(level.shape, generator=generator) < 0.25
                level = torch.where(move, (level + delta).clamp(0, grid.shape[0] - 1), level)
                s_new = grid[level]
            v_new = acquisition(_with_fidelity(X_new, s_new, has_fidelity))
            X_pool = torch.cat([best_X, X_new])
            s_pool = torch.cat([best_s, s_new])
            v_pool = torch.cat([best_v, v_new])
            keep = torch.argsort(v_pool, descending=True)[:n_keep]
            best_X, best_s, best_v = X_pool[keep], s_pool[keep], v_pool[keep]

    if n_refine > 0 and space.dim > 0:
        top = slice(0, min(n_refine, best_X.shape[0]))
        # A refined candidate scores at least its start, so it replaces it.
        best_X[top], best_v[top] = refine_continuous(acquisition, space, best_X[top], best_s[top])
        order = torch.argsort(best_v, descending=True)
        best_X, best_s, best_v = best_X[order], best_s[order], best_v[order]

    return Candidate(x=best_X[0], s=float(best_s[0]), value=float(best_v[0]))
