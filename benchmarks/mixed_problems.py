r"""Mixed-space multi-fidelity problems with a conditional parameter, for ``bench_mf.py``.

Two simulated training runs, each with a log-float learning rate ``lr``, an int, a
categorical ``optimizer`` in ``("adam", "sgd", "rmsprop")`` and a conditional ``momentum`` in
``[0, 0.99]`` that exists only when ``optimizer == "sgd"``. The fidelity is ``epochs``, a log
int in ``[1, 81]`` (the :class:`~mf_protocol.MFProblem` convention), so that
``s = log(epochs) / log(81)`` and ISBOSampler's five fidelity levels, 1, 3, 9, 27 and 81 epochs,
are also Hyperband's budgets at ``eta = 3`` (SMAC3, DEHB).

With ``t = 1 - s`` (0 at the target), a branch ``b`` (the optimizer) and its optimum
``z_b^*(t)`` in the branch's coordinates ``z``, the observed value is

.. math::

    y(x, s) = 0.6\,t + \phi_b(t) + h(q_b(x, t)) + (0.01 + 0.1\,t)\,\varepsilon, \qquad
    q_b(x, t) = \sum_j \left(\frac{z_j - z_{b,j}^*(t)}{w_j}\right)^2, \qquad
    h(q) = \log(1 + q),

:math:`\varepsilon \sim \mathcal{N}(0, 1)`. ``0.6 t`` is the higher loss of shorter training
(the same for every configuration), :math:`\phi_b(t)` the branch's floor, and the bowl
:math:`h` is quadratic near the optimum and flattens far from it, as a loss that training
barely moved does. The optimum
:math:`z_b^*(t)` moves linearly with ``t`` and the floors change with it, so the cheapest
fidelity's minimizer is not the target's; the bias shrinks to nothing at the target, and the
intermediate fidelities interpolate, so cheap runs still tell where to look. The target value
:math:`f(x) = \phi_b(0) + h(q_b(x, 0))` is noiseless, with :math:`\phi_b(0) \ge 0` for every
branch and 0 for one, whose bowl vanishes at one point: :math:`f^* = 0` by construction.

For SGD the learning-rate coordinate is the effective step ``log10(lr / (1 - momentum))`` of
heavy-ball momentum (the learning rate ``epsilon / (1 - m)`` in the noise scale of Smith,
Kindermans, Ying and Le, "Don't Decay the Learning Rate, Increase the Batch Size", ICLR 2018,
arXiv:1711.00489), so the best ``lr`` depends on ``momentum``: a curved valley, as in real
training. The direction of each shift (larger steps and smaller models at
low fidelity) is a choice of this benchmark, not a claim about any particular network.

- ``mixed-momentum`` (``lr`` in ``[1e-4, 1]``, ``width`` a log int in ``[16, 1024]``): the
  optimum is in the conditional branch, SGD at ``lr = 0.03``, ``momentum = 0.9``,
  ``width = 256``. Every fidelity ranks the branches alike (SGD, Adam, RMSprop), but the cheap
  ones move SGD's optimum to a 5-fold larger step, less momentum and a narrower network
  (``lr = 0.75``, ``momentum = 0.6``, ``width = 64`` at one epoch): the cheap runs find the
  right branch and the wrong point in it. Floors at the target 0 / 0.08 / 0.2.
- ``mixed-switch`` (``lr`` in ``[1e-5, 0.1]``, ``depth`` an int in ``[1, 8]``, ``dropout`` a
  float in ``[0, 0.5]``): the optimum is in the unconditional branch, Adam at ``lr = 5e-4``,
  ``depth = 5``, ``dropout = 0.25``, but below ``s = 0.6`` (fewer than 14 epochs) SGD, the
  conditional branch, looks best: its floor falls from 0.12 at the target to -0.18 at one
  epoch. The cheap fidelities' favourite branch is a trap; their ranking within a branch (a
  larger ``lr``, shallower, no dropout at one epoch) still points near the target's.

Every problem carries its whole search space (``MFProblem.space``, both branches) and the
condition on ``momentum`` (``MFProblem.conditions``), which drivers that need a fixed space
(SMAC3 and DEHB through ConfigSpace's ``EqualsCondition``) use; the objective functions reject
a configuration that sets ``momentum`` outside its branch or lacks it inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from mf_protocol import Condition, MFProblem
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

FIDELITY = "epochs"
FIDELITY_HIGH = 81
OPTIMIZERS = ("adam", "sgd", "rmsprop")
CONDITIONAL = "momentum"
CONDITION = Condition(child=CONDITIONAL, parent="optimizer", value="sgd")
OFFSET = 0.6  # the extra loss of the cheapest fidelity, the same for every configuration
NOISE_STD = (0.01, 0.1)  # noise standard deviation 0.01 + 0.1 t


@dataclass(frozen=True)
class Branch:
    """One optimizer's bowl: its floor and optimum as functions of ``t = 1 - s``.

    ``floor = (phi_0, phi_1)`` is the floor at the target and at the cheapest fidelity,
    ``optimum[j] = (z_0, z_1)`` and ``width[j]`` the optimum and scale of coordinate ``j``;
    both move linearly in ``t``.
    """

    floor: tuple[float, float]
    optimum: Mapping[str, tuple[float, float]]
    width: Mapping[str, float]

    def value(self, z: Mapping[str, float], t: float) -> float:
        """``phi(t) + log(1 + q(z, t))``, the branch's loss without the offset and the noise.

        Parameters
        ----------
        z
            The configuration's coordinates (``MixedProblem.coordinates``).
        t
            ``1 - s``: 0 at the target, 1 at the cheapest fidelity.

        Returns
        -------
        float
        """
        q = sum(
            ((z[j] - (z0 + (z1 - z0) * t)) / self.width[j]) ** 2
            for j, (z0, z1) in self.optimum.items()
        )
        phi0, phi1 = self.floor
        return phi0 + (phi1 - phi0) * t + math.log1p(q)


@dataclass(frozen=True)
class MixedProblem:
    """A mixed problem's definition: search space, coordinates, branches and stated optimum.

    ``coordinates(params)`` maps a configuration to the coordinates ``z`` that its branch's
    bowl measures; ``optimum`` is the target minimizer (``f = 0`` there) and
    ``cheap_optimum`` the minimizer at the cheapest fidelity (``s = 0``).
    """

    name: str
    space: Mapping[str, BaseDistribution]
    coordinates: Callable[[dict[str, Any]], dict[str, float]]
    branches: Mapping[str, Branch]
    optimum: Mapping[str, Any]
    cheap_optimum: Mapping[str, Any]

    def check(self, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless ``params`` is one configuration of the space.

        Parameters
        ----------
        params
            A configuration without the fidelity: ``momentum`` set exactly when
            ``optimizer == "sgd"``, every other parameter always, each inside its distribution.

        Raises
        ------
        ValueError
            A parameter missing, set outside its branch, unknown, or outside its range.
        """
        active = {n for n in self.space if n != CONDITIONAL}
        if params.get(CONDITION.parent) == CONDITION.value:
            active.add(CONDITIONAL)
        if set(params) != active:
            raise ValueError(
                f"{self.name}: parameters {sorted(params)} given, {sorted(active)} expected "
                f"({CONDITIONAL!r} exists only when {CONDITION.parent} == {CONDITION.value!r})."
            )
        for name, value in params.items():
            d = self.space[name]
            if isinstance(d, CategoricalDistribution):
                inside = value in d.choices
            else:
                assert isinstance(d, (FloatDistribution, IntDistribution))
                inside = d.low <= value <= d.high
            if not inside:
                raise ValueError(f"{self.name}: {name}={value!r} is outside {d!r}.")

    def value(self, params: dict[str, Any], s: float) -> float:
        """The noiseless value at unit fidelity ``s`` (the target at ``s = 1``).

        Parameters
        ----------
        params
            A configuration (:meth:`check`).
        s
            The unit fidelity, ``log(epochs) / log(81)``, clipped to ``[0, 1]``.

        Returns
        -------
        float
        """
        self.check(params)
        t = 1.0 - min(max(s, 0.0), 1.0)
        branch = self.branches[params["optimizer"]]
        return OFFSET * t + branch.value(self.coordinates(params), t)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest a configuration: ``momentum`` only for SGD.

        Parameters
        ----------
        trial
            The trial that suggests the parameters (not the fidelity).

        Returns
        -------
        dict
            The suggested configuration.
        """
        params: dict[str, Any] = {}
        for name, d in self.space.items():
            if name == CONDITIONAL:
                continue
            if isinstance(d, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, d.choices)
            elif isinstance(d, IntDistribution):
                params[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
            else:
                assert isinstance(d, FloatDistribution)
                params[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
        if params[CONDITION.parent] == CONDITION.value:
            d = self.space[CONDITIONAL]
            assert isinstance(d, FloatDistribution)
            params[CONDITIONAL] = trial.suggest_float(CONDITIONAL, d.low, d.high)
        return params

    def observe(
        self, params: dict[str, Any], s: float, rng: np.random.Generator, noise_scale: float
    ) -> float:
        """The value at ``s`` with noise of standard deviation ``0.01 + 0.1 (1 - s)``.

        Parameters
        ----------
        params
            A configuration (:meth:`check`).
        s
            The unit fidelity.
        rng
            The source of the noise.
        noise_scale
            Multiplies the noise's standard deviation (0: noiseless).

        Returns
        -------
        float
        """
        std = noise_scale * (NOISE_STD[0] + NOISE_STD[1] * (1.0 - s))
        return self.value(params, s) + std * float(rng.normal())

    def target(self, params: dict[str, Any]) -> float:
        """The noiseless target value ``f(x)``, ``>= 0`` and 0 at :attr:`optimum`.

        Parameters
        ----------
        params
            A configuration (:meth:`check`).

        Returns
        -------
        float
        """
        return self.value(params, 1.0)

    def problem(self) -> MFProblem:
        """The :class:`~mf_protocol.MFProblem` that ``bench_mf.py`` runs.

        Returns
        -------
        MFProblem
            With ``f_min = 0``, the fidelity ``epochs`` in ``[1, 81]``, the whole space and
            the condition on ``momentum``.
        """
        return MFProblem(
            name=self.name,
            suggest=self.suggest,
            observe=self.observe,
            target=self.target,
            f_min=0.0,
            fidelity=FIDELITY,
            fidelity_high=FIDELITY_HIGH,
            noise=f"noise std {NOISE_STD[0]:g} + {NOISE_STD[1]:g} (1 - s)",
            space=dict(self.space),
            conditions=(CONDITION,),
        )


def _step(params: Mapping[str, Any]) -> float:
    """``log10`` of the step: ``lr``, or ``lr / (1 - momentum)`` for SGD (Smith et al. 2018)."""
    lr = float(params["lr"])
    if params["optimizer"] == "sgd":
        lr /= 1.0 - float(params[CONDITIONAL])
    return math.log10(lr)


def _momentum_coordinates(params: dict[str, Any]) -> dict[str, float]:
    z = {"step": _step(params), "width": math.log2(params["width"])}
    if params["optimizer"] == "sgd":
        z["momentum"] = float(params[CONDITIONAL])
    return z


_MOMENTUM_SCALES = {"step": 0.7, "width": 2.0, "momentum": 0.25}

MIXED_MOMENTUM = MixedProblem(
    name="mixed-momentum",
    space={
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "width": IntDistribution(16, 1024, log=True),
        "optimizer": CategoricalDistribution(OPTIMIZERS),
        CONDITIONAL: FloatDistribution(0.0, 0.99),
    },
    coordinates=_momentum_coordinates,
    branches={
        # SGD: step 0.3 (lr 0.03 at momentum 0.9) and width 256 at the target; step 1.875
        # (lr 0.75 at momentum 0.6) and width 64 at one epoch.
        "sgd": Branch(
            floor=(0.0, 0.0),
            optimum={
                "step": (math.log10(0.3), math.log10(1.875)),
                "momentum": (0.9, 0.6),
                "width": (8.0, 6.0),
            },
            width=_MOMENTUM_SCALES,
        ),
        "adam": Branch(
            floor=(0.08, 0.04),
            optimum={"step": (math.log10(2e-3), math.log10(1e-2)), "width": (8.0, 6.0)},
            width=_MOMENTUM_SCALES,
        ),
        "rmsprop": Branch(
            floor=(0.2, 0.15),
            optimum={"step": (math.log10(1e-3), math.log10(5e-3)), "width": (7.0, 5.0)},
            width=_MOMENTUM_SCALES,
        ),
    },
    optimum={"lr": 0.03, "width": 256, "optimizer": "sgd", CONDITIONAL: 0.9},
    cheap_optimum={"lr": 0.75, "width": 64, "optimizer": "sgd", CONDITIONAL: 0.6},
)


def _switch_coordinates(params: dict[str, Any]) -> dict[str, float]:
    z = {
        "step": _step(params),
        "depth": float(params["depth"]),
        "dropout": float(params["dropout"]),
    }
    if params["optimizer"] == "sgd":
        z["momentum"] = float(params[CONDITIONAL])
    return z


_SWITCH_SCALES = {"step": 0.7, "depth": 2.0, "dropout": 0.15, "momentum": 0.25}
# Every branch: shallower (depth 5 -> 2) and no dropout (0.25 -> 0) at one epoch.
_SWITCH_SHAPE = {"depth": (5.0, 2.0), "dropout": (0.25, 0.0)}

MIXED_SWITCH = MixedProblem(
    name="mixed-switch",
    space={
        "lr": FloatDistribution(1e-5, 0.1, log=True),
        "depth": IntDistribution(1, 8),
        "dropout": FloatDistribution(0.0, 0.5),
        "optimizer": CategoricalDistribution(OPTIMIZERS),
        CONDITIONAL: FloatDistribution(0.0, 0.99),
    },
    coordinates=_switch_coordinates,
    branches={
        # Adam: the target's optimum (lr 5e-4); a 4-fold larger lr at one epoch.
        "adam": Branch(
            floor=(0.0, 0.0),
            optimum={"step": (math.log10(5e-4), math.log10(2e-3)), **_SWITCH_SHAPE},
            width=_SWITCH_SCALES,
        ),
        # SGD: 0.12 above Adam at the target, 0.18 below it at one epoch; step 0.02 (lr 2e-3
        # at momentum 0.9) at the target, 0.08 at momentum 0.8 at one epoch.
        "sgd": Branch(
            floor=(0.12, -0.18),
            optimum={
                "step": (math.log10(0.02), math.log10(0.08)),
                "momentum": (0.9, 0.8),
                **_SWITCH_SHAPE,
            },
            width=_SWITCH_SCALES,
        ),
        "rmsprop": Branch(
            floor=(0.25, 0.15),
            optimum={"step": (math.log10(3e-4), math.log10(1.2e-3)), **_SWITCH_SHAPE},
            width=_SWITCH_SCALES,
        ),
    },
    optimum={"lr": 5e-4, "depth": 5, "dropout": 0.25, "optimizer": "adam"},
    cheap_optimum={"lr": 0.016, "depth": 2, "dropout": 0.0, "optimizer": "sgd", CONDITIONAL: 0.8},
)

MIXED = {p.name: p for p in (MIXED_MOMENTUM, MIXED_SWITCH)}


def build_mixed_problems() -> dict[str, MFProblem]:
    """``mixed-momentum`` and ``mixed-switch`` as :class:`~mf_protocol.MFProblem` s.

    Returns
    -------
    dict
        The problems by name.
    """
    return {name: p.problem() for name, p in MIXED.items()}
