"""optuna-isbo: cost-aware multi-fidelity Bayesian optimization for Optuna.

The public names are imported lazily so that ``from optuna_isbo import ISSGD`` does not pay
for importing the Bayesian-optimization stack (BoTorch, GPyTorch), and vice versa.

- :class:`ISBOSampler` (``optuna_isbo.sampler``): an Optuna sampler choosing each trial's
  hyperparameters *and* fidelity by entropy reduction per unit of expected cost.
- :class:`ISSGD` (``optuna_isbo.issgd``): importance-sampled minibatches for any PyTorch loop;
  :class:`ISSGDCallback`, the same as hooks around the user's own DataLoader and step.
- :func:`learn_schedules` (``optuna_isbo.hypergrad``): learning-rate, momentum and weight-decay
  schedules by forward-mode hypergradients.
- :func:`fit_prior` and :class:`GPPrior` (``optuna_isbo.meta``): a GP prior pre-trained on
  finished studies of related tasks, for ``ISBOSampler(prior=...)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ISBOSampler": "optuna_isbo.sampler",
    "ISSGD": "optuna_isbo.issgd",
    "ISSGDCallback": "optuna_isbo.issgd",
    "GPPrior": "optuna_isbo.meta",
    "fit_prior": "optuna_isbo.meta",
    "Schedules": "optuna_isbo.hypergrad",
    "learn_schedules": "optuna_isbo.hypergrad",
}

__all__ = [
    "GPPrior",
    "ISBOSampler",
    "ISSGD",
    "ISSGDCallback",
    "Schedules",
    "__version__",
    "fit_prior",
    "learn_schedules",
]

if TYPE_CHECKING:
    from optuna_isbo.hypergrad import Schedules, learn_schedules
    from optuna_isbo.issgd import ISSGD, ISSGDCallback
    from optuna_isbo.meta import GPPrior, fit_prior
    from optuna_isbo.sampler import ISBOSampler


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'optuna_isbo' has no attribute {name!r}")
