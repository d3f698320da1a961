"""What the recommendation and the budget split make of unusual studies.

Each case was found by probing the sampler with studies a user can build:

* conditional parameters (outside the joint search space) that tell trials of one model
  configuration apart, with and without constraints and a fidelity;
* constraint values missing from a completed trial, and studies where nothing is feasible;
* runs above ``target_fidelity``;
* a repeated configuration with one far-out value (the outlier fence);
* ``isbo:diverged`` given as a NumPy or torch bool, an int or a string;
* enqueued trials and one absurd cost in the split of the cost between the two searches;
* a recommendation resting on one cheap observed value.

The studies are built with ``study.add_trial`` (no optimization loop), so each test fits a GP
or two at most. Objectives are deterministic, and the assertions follow from what was
observed: e.g. "the recommendation is at least as good as the best observed configuration".
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import create_trial

from optuna_isbo.trials import ran_in_full

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIDELITY = "super_batch_size"
X = FloatDistribution(0.0, 1.0)
B = IntDistribution(32, 512, log=True)
KIND = CategoricalDistribution(["a", "b"])


def _add(
    study: optuna.Study,
    value: float,
    params: dict[str, Any],
    *,
    constraints: dict[str, float] | None = None,
    user_attrs: dict[str, Any] | None = None,
) -> None:
    """Add a completed trial; every float parameter on ``[0, 1]``, the fidelity on ``B``."""
    distributions: dict[str, BaseDistribution] = {
        name: (KIND if name == "kind" else B if name == FIDELITY else X) for name in params
    }
    study.add_trial(
        create_trial(
            value=value,
            params=params,
            distributions=distributions,
            constraints=constraints,
            user_attrs=user_attrs,
        )
    )


def _bias(b: int) -> float:
    """How much worse a run at super-batch ``b`` looks than one at the target 512."""
    return 0.1 * (1.0 - math.log(b) / math.log(512))


# ---- conditional parameters ---------------------------------------------------------------


def _two_arms(kind: str, p: float) -> float:
    """Arm ``a`` is best at ``pa = 0.5`` (0) but poor on average; arm ``b`` is 0.02 or so."""
    return (p - 0.5) ** 2 if kind == "a" else 0.02 + 0.2 * (p - 0.5) ** 2


_ARM_RUNS = [
    ("a", 0.0),
    ("a", 0.95),
    ("a", 0.41),
    ("a", 0.1),
    ("a", 0.85),
    ("b", 0.3),
    ("b", 0.6),
    ("b", 0.8),
    ("b", 0.45),
]


# ---- constraints --------------------------------------------------------------------------


# ---- the target fidelity ------------------------------------------------------------------


# ---- outliers -----------------------------------------------------------------------------


# ---- isbo:diverged ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "diverged"),
    [
        (True, True),
        (np.True_, True),
        (torch.tensor(True), True),
        (np.array(True), True),
        (1, True),
        (False, False),
        (np.False_, False),
        (torch.tensor(False), False),
        (0, False),
        (None, False),
    ],
)
def test_bool_like_diverged_flags_are_honoured(flag: object, diverged: bool) -> None:
    trial = create_trial(
        value=1.0, params={}, distributions={}, user_attrs={"isbo:diverged": flag}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ran_in_full(trial) is not diverged


@pytest.mark.parametrize("flag", ["true", 2, 1.0, [True]])
def test_other_diverged_flags_are_refused_with_a_warning(flag: object) -> None:
    trial = create_trial(
        value=1.0, params={}, distributions={}, user_attrs={"isbo:diverged": flag}
    )
    with pytest.warns(RuntimeWarning, match="isbo:diverged"):
        assert ran_in_full(trial)


# ---- the split of the cost ----------------------------------------------------------------


# ---- what the recommendation says it is ---------------------------------------------------
