"""The GP marginal likelihood of a batch of studies, shared by the fit and the refit.

:func:`~optuna_isbo.meta.fit_prior` sums it over the studies; :meth:`GPPrior.adapt
<optuna_isbo.meta.GPPrior.adapt>` refits a prior's variances to one new study with it.
"""

from __future__ import annotations

import torch

from optuna_isbo.model import _JITTER, GPParams, _kernel, _noise_var


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
