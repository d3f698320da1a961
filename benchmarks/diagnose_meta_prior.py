r"""Why the pre-trained prior's lead fades on ``bench_meta.py``: the prior with its lengthscales
refitted to the study as well.

:meth:`optuna_isbo.meta.GPPrior.adapt` refits the outputscale and the noise variance to the new
study (MAP under a log-normal hyperprior centred on the pre-trained values) and keeps the
lengthscales pre-trained. This script runs ``bench_meta.py`` with an ``adapt`` that also
refits the lengthscales under the same hyperprior, to test whether lengthscales pooled over the
related tasks hold the study back once it has its own data. (The other hypothesis, the
pre-trained mean function taking over, is tested without this script: ``bench_meta.py --mean
constant``.) Arguments are ``bench_meta.py``'s.

Usage::

    python benchmarks/diagnose_meta_prior.py --seeds 10 --methods isbo-prior \
        --out /tmp/meta_lengthscales/meta.jsonl
"""

from __future__ import annotations

import math
import runpy
import sys
from dataclasses import replace
from pathlib import Path

import torch

from optuna_isbo.meta import prior as prior_module
from optuna_isbo.meta.likelihood import _neg_log_ml
from optuna_isbo.model import (
    _LOG_LENGTHSCALE_BOUNDS,
    _LOG_NOISE_BOUNDS,
    _LOG_OUTPUTSCALE_BOUNDS,
    GPModel,
    GPParams,
    condition,
    minimize_lbfgsb,
)


def adapt_with_lengthscales(
    self: prior_module.GPPrior,
    inputs: torch.Tensor,
    y: torch.Tensor,
    *,
    log_sd: float = 1.0,
    max_iter: int = 50,
) -> GPModel:
    """``GPPrior.adapt`` with the lengthscales in the refitted hyperparameters."""
    inputs, y = inputs.to(torch.float64), y.to(torch.float64)
    if log_sd == 0 or y.shape[0] == 0:
        return self.condition(inputs, y)
    resid = (y - self.mean_function(inputs))[None]
    d = self.params.lengthscales.shape[0]
    variances = torch.stack([self.params.outputscale.log(), self.params.noise.log()])
    theta_pre = torch.cat([variances, self.params.lengthscales.log()])

    def unpack(theta: torch.Tensor) -> GPParams:
        return replace(
            self.params,
            outputscale=theta[0].exp(),
            noise=theta[1].exp(),
            lengthscales=theta[2:].exp(),
        )

    def loss_fn(theta: torch.Tensor) -> torch.Tensor | None:
        params = unpack(theta)
        nll = _neg_log_ml(inputs[None], resid, params, self.has_fidelity, self.heteroscedastic)
        if nll is None:
            return None
        return (nll + 0.5 * ((theta - theta_pre) / log_sd).square().sum()) / y.shape[0]

    bounds = [_LOG_OUTPUTSCALE_BOUNDS, _LOG_NOISE_BOUNDS] + [_LOG_LENGTHSCALE_BOUNDS] * d
    theta, loss = minimize_lbfgsb(loss_fn, theta_pre.numpy(), bounds, max_iter)
    if not math.isfinite(loss):
        return self.condition(inputs, y)
    params = unpack(torch.as_tensor(theta, dtype=torch.float64))
    return condition(
        inputs, y, params, self.has_fidelity, self.heteroscedastic, mean_fn=self.mean_function
    )


def main() -> None:
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    prior_module.GPPrior.adapt = adapt_with_lengthscales  # type: ignore[method-assign]
    sys.argv = [str(here / "bench_meta.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
