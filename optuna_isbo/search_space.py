r"""Encoding of an Optuna search space to the unit cube, with an optional fidelity axis.

Every hyperparameter is mapped to zero or more columns of ``x`` in ``[0, 1]^dim``; the fidelity
parameter (for IS-SGD, the super-batch size ``B``) is mapped to a separate scalar ``s`` in
``[0, 1]`` and is never part of ``x``.

Hyperparameters, with ``u`` the encoded value of a value ``v`` and ``[l, h]`` the bounds of its
distribution:

- float, linear: :math:`u = (v - l) / (h - l)`;
- float, log: :math:`u = (\log v - \log l) / (\log h - \log l)`;
- a grid of :math:`K` values :math:`v_k = l + k \cdot \mathrm{step}` (int, or float with a
  ``step``): on a linear scale value :math:`k` owns the cell :math:`[k / K, (k + 1) / K)` and is
  encoded at its centre :math:`(k + 1/2) / K`; on a log scale (log int) the axis is
  :math:`\log v` padded by half a step on both sides,
  :math:`u = (\log v - \log(l - \mathrm{step}/2)) / (\log(h + \mathrm{step}/2)
  - \log(l - \mathrm{step}/2))`, and a point decodes to the grid value nearest to
  :math:`v(u)`, so value :math:`k` owns the cell of :math:`[v_k - \mathrm{step}/2,
  v_k + \mathrm{step}/2]`;
- categorical with :math:`C` choices: a one-hot block of :math:`C` columns, decoded by argmax;
- a distribution with a single possible value: no column at all.

The fidelity ``B`` with lowest value :math:`B_\mathrm{low}` and target
:math:`B_\mathrm{target}` is always encoded on a log scale, whatever the scale of its
distribution:

.. math::

    s = \frac{\log B - \log B_\mathrm{low}}{\log B_\mathrm{target} - \log B_\mathrm{low}},

so that ``s = 1`` is the target fidelity. Values above the target are encoded as ``s = 1``:
the model has no axis beyond the target, so a run there is not data about the target
(:meth:`SearchSpace.above_target`; the recommendation leaves such runs out).

Values outside their distribution (possible when a study's search space changed) are clipped
into it when encoded, and a categorical value that is not among the choices is encoded as the
centre of its one-hot block (``1 / C`` in every column), equally far from every choice.
All numerics are float64 torch.
"""

from __future__ import annotations

import decimal
import enum
import functools
import math
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

_DTYPE = torch.float64


class _Kind(enum.Enum):
    SINGLE = enum.auto()
    CONTINUOUS = enum.auto()
    GRID = enum.auto()
    CATEGORICAL = enum.auto()


@dataclass(frozen=True)
class _Param:
    """How one hyperparameter maps to its columns of ``x``.

    ``low``, ``high``, ``step`` and ``log`` describe numeric distributions (``step == 0.0`` for
    continuous ones); ``n_values`` is the number of grid values or choices (0 when continuous).
    """

    name: str
    distribution: BaseDistribution
    kind: _Kind
    columns: slice
    low: float = 0.0
    high: float = 0.0
    step: float = 0.0
    log: bool = False
    n_values: int = 0


def _grid_size(low: float, high: float, step: float) -> int:
    # Decimal arithmetic, as in Optuna's own adjustment of ``high``, so that steps such as 0.1
    # do not lose or gain a grid value to rounding.
    span = decimal.Decimal(str(high)) - decimal.Decimal(str(low))
    return int((span / decimal.Decimal(str(step))).to_integral_value()) + 1


def _make_param(name: str, distribution: BaseDistribution, first_column: int) -> _Param:
    if isinstance(distribution, CategoricalDistribution):
        n_choices = len(distribution.choices)
        if n_choices == 1:
            return _Param(name, distribution, _Kind.SINGLE, slice(first_column, first_column))
        return _Param(
            name,
            distribution,
            _Kind.CATEGORICAL,
            slice(first_column, first_column + n_choices),
            n_values=n_choices,
        )
    if not isinstance(distribution, (FloatDistribution, IntDistribution)):
        raise ValueError(
            f"Unsupported distribution {distribution!r} for parameter {name!r} in `distributions`."
        )
    low, high = float(distribution.low), float(distribution.high)
    if distribution.single():
        return _Param(
            name, distribution, _Kind.SINGLE, slice(first_column, first_column), low=low, high=low
        )
    columns = slice(first_column, first_column + 1)
    if distribution.step is None:
        return _Param(
            name, distribution, _Kind.CONTINUOUS, columns, low=low, high=high, log=distribution.log
        )
    step = float(distribution.step)
    return _Param(
        name,
        distribution,
        _Kind.GRID,
        columns,
        low=low,
        high=high,
        step=step,
        log=distribution.log,
        n_values=_grid_size(low, high, step),
    )


def _log_grid_bounds(param: _Param) -> tuple[float, float]:
    return math.log(param.low - 0.5 * param.step), math.log(param.high + 0.5 * param.step)


def _grid_index_of_unit(param: _Param, u: torch.Tensor) -> torch.Tensor:
    """Grid index (float64 holding integers) of the cell that contains each ``u``; shape kept."""
    last = float(param.n_values - 1)
    if param.log:
        log_low, log_high = _log_grid_bounds(param)
        value = torch.exp(log_low + u * (log_high - log_low))
        return torch.floor((value - param.low) / param.step + 0.5).clamp(0.0, last)
    return torch.floor(u * param.n_values).clamp(0.0, last)


def _unit_of_grid_index(param: _Param, index: torch.Tensor) -> torch.Tensor:
    """Encoded position of grid values given by index; shape kept."""
    if param.log:
        log_low, log_high = _log_grid_bounds(param)
        value = param.low + index * param.step
        return (torch.log(value) - log_low) / (log_high - log_low)
    return (index + 0.5) / param.n_values


def _unit_of_grid_index_scalar(param: _Param, index: int) -> float:
    """:func:`_unit_of_grid_index` of one index, as a Python float (the same bits)."""
    if not param.log:
        return (index + 0.5) / param.n_values
    return _log_unit_of_grid_index(param.low, param.high, param.step, param.n_values, index)


@functools.lru_cache(maxsize=65536)
def _log_unit_of_grid_index(
    low: float, high: float, step: float, n_values: int, index: int
) -> float:
    # Cached: a study encodes the same grid values on every ``ask``. Computed by the tensor
    # function, so that both give the same bits.
    param = _Param(
        "", FloatDistribution(0.0, 1.0), _Kind.GRID, slice(0, 1), low, high, step, True, n_values
    )
    return float(_unit_of_grid_index(param, torch.tensor(float(index), dtype=_DTYPE)))


def _grid_index_of_value(low: float, step: float, last_index: int, value: float) -> int:
    return min(max(math.floor((value - low) / step + 0.5), 0), last_index)


def _grid_value(distribution: BaseDistribution, index: int) -> float | int:
    """The ``index``-th value of an int or stepped float distribution, exactly."""
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    assert distribution.step is not None
    if isinstance(distribution, IntDistribution):
        # The index comes from float arithmetic, which past 2**53 may land one step beyond.
        return min(
            max(distribution.low + index * distribution.step, distribution.low), distribution.high
        )
    value = float(
        decimal.Decimal(str(distribution.low)) + index * decimal.Decimal(str(distribution.step))
    )
    return min(max(value, distribution.low), distribution.high)


def _continuous_unit_of_value(param: _Param, value: float) -> float:
    value = min(max(value, param.low), param.high)
    if param.log:
        u = (math.log(value) - math.log(param.low)) / (math.log(param.high) - math.log(param.low))
    else:
        u = (value - param.low) / (param.high - param.low)
    return min(max(u, 0.0), 1.0)


def _continuous_value_of_unit(param: _Param, u: float) -> float:
    # The ends are exact: exp(log(low)) may differ from low in the last bit.
    if u <= 0.0:
        return param.low
    if u >= 1.0:
        return param.high
    if param.log:
        log_low, log_high = math.log(param.low), math.log(param.high)
        value = math.exp(log_low + u * (log_high - log_low))
    else:
        value = param.low + u * (param.high - param.low)
    return min(max(value, param.low), param.high)


class SearchSpace:
    """Encodes an Optuna search space to the unit cube, with an optional fidelity axis.

    Hyperparameters are encoded to columns of ``x`` in ``[0, 1]^dim`` (sorted by name) and the
    fidelity parameter, if any, to a scalar ``s`` in ``[0, 1]`` on a log scale; see the module
    docstring for the exact maps.

    Parameters
    ----------
    distributions
        Parameter name to distribution, e.g. the relative search space of a sampler. Float,
        int (both with or without ``log`` and ``step``) and categorical distributions are
        supported.
    fidelity_param
        Name of the fidelity parameter, an int or float distribution with ``low > 0``
        (linear or log: the fidelity is always encoded on a log scale). When ``None``, when
        the name is not in ``distributions``, or when its lowest value equals the target
        fidelity, the space has no fidelity axis: :attr:`fidelity_param` is ``None``, the
        parameter (if present) is encoded like any other hyperparameter, and every point is
        at ``s = 1``.
    target_fidelity
        The fidelity that the optimization is about (``s = 1``). Defaults to the
        distribution's ``high``; must be one of the distribution's values.

    Raises
    ------
    ValueError
        If ``fidelity_param`` names a categorical distribution, if its ``low`` is not
        positive, or if ``target_fidelity`` is not a value of its distribution.

    Attributes
    ----------
    names
        Hyperparameter names in the order of their columns in ``x`` (sorted), the fidelity
        parameter excluded. Parameters with a single possible value are included but own
        no column.
    fidelity_param
        Name of the fidelity parameter, or ``None`` when there is no fidelity axis.
    dim
        Number of columns of ``x``.
    fidelity_low, target_fidelity
        Lowest and target fidelity values (``nan`` when there is no fidelity axis).
    continuous_mask
        Tensor of shape ``(dim,)``, bool: the columns of float parameters without a step,
        which may be refined continuously.
    categorical_slices
        One slice of columns per categorical parameter (its one-hot block).
    param_columns
        Parameter name to its slice of columns (empty for single-valued parameters).
    """

    def __init__(
        self,
        distributions: dict[str, BaseDistribution],
        fidelity_param: str | None = None,
        target_fidelity: float | None = None,
    ) -> None:
        self.distributions = dict(distributions)
        self.fidelity_param: str | None = None
        self.fidelity_low = math.nan
        self.target_fidelity: float = math.nan
        self._fidelity_distribution: FloatDistribution | IntDistribution | None = None
        self._fidelity_last_index = 0
        if fidelity_param is not None and fidelity_param in distributions:
            self._init_fidelity(fidelity_param, distributions[fidelity_param], target_fidelity)

        self.names = sorted(name for name in distributions if name != self.fidelity_param)
        self._params: list[_Param] = []
        self._choice_lookup: dict[str, dict[tuple[type, Any], int]] = {}
        n_columns = 0
        for name in self.names:
            param = _make_param(name, distributions[name], n_columns)
            self._params.append(param)
            n_columns = param.columns.stop
        self.dim = n_columns
        self.param_columns = {param.name: param.columns for param in self._params}
        # On the CPU whatever the default device, like every tensor of the model.
        self.continuous_mask = torch.zeros(self.dim, dtype=torch.bool, device="cpu")
        for param in self._params:
            if param.kind == _Kind.CONTINUOUS:
                self.continuous_mask[param.columns] = True
        self.categorical_slices = [
            param.columns for param in self._params if param.kind == _Kind.CATEGORICAL
        ]

    def _init_fidelity(
        self, name: str, distribution: BaseDistribution, target_fidelity: float | None
    ) -> None:
        if not isinstance(distribution, (FloatDistribution, IntDistribution)):
            raise ValueError(
                f"`fidelity_param` {name!r} must have an int or float distribution, "
                f"but got {distribution!r}."
            )
        target = distribution.high if target_fidelity is None else target_fidelity
        if not distribution._contains(target):
            raise ValueError(
                f"`target_fidelity` must be a value of the distribution of {name!r} "
                f"({distribution!r}), but got {target_fidelity}."
            )
        if distribution.step is not None:
            self._fidelity_last_index = _grid_index_of_value(
                distribution.low, distribution.step, 2**62, target
            )
            target = _grid_value(distribution, self._fidelity_last_index)
        if target == distribution.low:
            if distribution.low == distribution.high:
                return  # A single value: no axis to optimize over.
            raise ValueError(
                f"`target_fidelity` {target_fidelity} of {name!r} is the lowest value of its "
                f"distribution ({distribution!r}): a fidelity axis needs a target above the "
                "lowest fidelity. Raise `target_fidelity`, or set `fidelity_param=None` to tune "
                f"{name!r} as an ordinary parameter."
            )
        if distribution.low <= 0:
            raise ValueError(
                f"The fidelity `fidelity_param` {name!r} is encoded on a log scale and needs "
                f"low > 0, but its distribution is {distribution!r}."
            )
        self.fidelity_param = name
        self.fidelity_low = float(distribution.low)
        # The distribution's own type: an int ``target_fidelity`` of a float parameter is
        # handed back (``recommend``) as a float.
        self.target_fidelity = (
            float(target) if isinstance(distribution, FloatDistribution) else target
        )
        self._fidelity_distribution = distribution

    # ---- fidelity ------------------------------------------------------------------------

    def fidelity_to_unit(self, value: float) -> float:
        """Encode a fidelity value as ``s`` in ``[0, 1]``.

        Values are clipped to ``[fidelity_low, target_fidelity]`` first, so a value above the
        target encodes as the target: test :meth:`above_target` where that matters.

        Raises
        ------
        ValueError
            If the space has no fidelity axis.
        """
        self._check_has_fidelity()
        value = min(max(float(value), self.fidelity_low), self.target_fidelity)
        log_low = math.log(self.fidelity_low)
        return (math.log(value) - log_low) / (math.log(self.target_fidelity) - log_low)

    def above_target(self, value: float) -> bool:
        """Whether a fidelity value lies above the target fidelity (``s > 1`` before clipping).

        A run there measures another quantity than the one optimized (a larger super-batch,
        more epochs), which :meth:`fidelity_to_unit` would encode as the target itself. Values
        within round-off (``1e-9`` in ``s``) of the target are at the target.

        Raises
        ------
        ValueError
            If the space has no fidelity axis.
        """
        self._check_has_fidelity()
        value = float(value)
        if not value > self.target_fidelity:
            return False
        log_low = math.log(self.fidelity_low)
        s = (math.log(value) - log_low) / (math.log(self.target_fidelity) - log_low)
        return s > 1.0 + 1e-9

    def unit_to_fidelity(self, s: float) -> float | int:
        """Decode ``s`` to the nearest valid fidelity value in ``[fidelity_low, target_fidelity]``.

        ``s`` is clipped to ``[0, 1]``; the value is rounded to the distribution's grid (nearest
        int, or nearest step) when it has one.

        Raises
        ------
        ValueError
            If the space has no fidelity axis.
        """
        distribution = self._check_has_fidelity()
        s = min(max(float(s), 0.0), 1.0)
        # The ends are exact: exp(log(target)) may differ from the target in the last bit.
        if s == 0.0:
            value = self.fidelity_low
        elif s == 1.0:
            value = self.target_fidelity
        else:
            log_low = math.log(self.fidelity_low)
            value = math.exp(log_low + s * (math.log(self.target_fidelity) - log_low))
        if distribution.step is None:
            return min(max(value, self.fidelity_low), self.target_fidelity)
        index = _grid_index_of_value(
            distribution.low, distribution.step, self._fidelity_last_index, value
        )
        return _grid_value(distribution, index)

    def fidelity_grid(self, n_max: int) -> torch.Tensor:
        """Candidate fidelities, as ``s`` values.

        Parameters
        ----------
        n_max
            Largest number of values to return.

        Returns
        -------
        torch.Tensor
            Tensor of shape ``(m,)`` with ``1 <= m <= n_max``, increasing, ending at ``1.0``,
            whose entries decode to distinct valid fidelity values. When the distribution has at
            most ``n_max`` values up to the target, all of them; otherwise ``n_max`` values
            evenly spaced in ``s`` and rounded to the distribution's grid (fewer when rounding
            merges some). ``tensor([1.0])`` when there is no fidelity axis.
        """
        if n_max < 1:
            raise ValueError(f"`n_max` must be at least 1, but got {n_max}.")
        distribution = self._fidelity_distribution
        if distribution is None:
            return torch.ones(1, dtype=_DTYPE)
        if distribution.step is not None and self._fidelity_last_index + 1 <= n_max:
            values = [_grid_value(distribution, k) for k in range(self._fidelity_last_index + 1)]
        elif n_max == 1:
            values = [self.target_fidelity]
        else:
            values = [self.unit_to_fidelity(k / (n_max - 1)) for k in range(n_max)]
        units = sorted({self.fidelity_to_unit(value) for value in values})
        return torch.tensor(units, dtype=_DTYPE)

    def _check_has_fidelity(self) -> FloatDistribution | IntDistribution:
        if self._fidelity_distribution is None:
            raise ValueError("This search space has no fidelity axis (`fidelity_param` is None).")
        return self._fidelity_distribution

    # ---- encoding ------------------------------------------------------------------------

    def encode_params(self, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """Encode one parameter dictionary.

        Parameters
        ----------
        params
            Parameter values (external representation); must contain every name in
            :attr:`names` and the fidelity parameter, if any. Other keys are ignored.

        Returns
        -------
        tuple
            ``x`` of shape ``(dim,)`` and the fidelity ``s`` (``1.0`` without a fidelity axis).
        """
        row = self._encode_row(params)
        x = torch.tensor(row, dtype=_DTYPE)
        s = 1.0
        if self.fidelity_param is not None:
            s = self.fidelity_to_unit(float(self._get(params, self.fidelity_param)))
        return x, s

    def _encode_row(self, params: dict[str, Any]) -> list[float]:
        """The ``dim`` encoded values of ``params`` as floats (see :meth:`encode_params`)."""
        row = [0.0] * self.dim
        for param in self._params:
            if param.kind == _Kind.SINGLE:
                continue
            value = self._get(params, param.name)
            if param.kind == _Kind.CONTINUOUS:
                row[param.columns.start] = _continuous_unit_of_value(param, float(value))
            elif param.kind == _Kind.GRID:
                index = _grid_index_of_value(
                    param.low, param.step, param.n_values - 1, float(value)
                )
                row[param.columns.start] = _unit_of_grid_index_scalar(param, index)
            else:
                choice = self._choice_index(param, value)
                if choice is None:
                    row[param.columns] = [1.0 / param.n_values] * param.n_values
                else:
                    row[param.columns.start + choice] = 1.0
        return row

    def _choice_index(self, param: _Param, value: Any) -> int | None:
        """Index of ``value`` among a categorical's choices, or ``None`` if it is not one."""
        assert isinstance(param.distribution, CategoricalDistribution)
        lookup = self._choice_lookup.get(param.name)
        if lookup is None:
            lookup = {}
            choices = param.distribution.choices
            for i, choice in enumerate(choices):
                # The fast path holds the choices that equal no earlier one (``1 == 1.0 ==
                # True``; the slow path returns the first equal choice) and are hashable.
                if choice != choice or any(choice == earlier for earlier in choices[:i]):
                    continue
                try:
                    lookup[(type(choice), choice)] = i
                except TypeError:
                    continue
            self._choice_lookup[param.name] = lookup
        try:
            index = lookup.get((type(value), value))
        except TypeError:
            index = None
        if index is not None:
            return index
        try:
            return int(param.distribution.to_internal_repr(value))
        except ValueError:
            return None

    def encode_trials(self, trials: Sequence[FrozenTrial]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the parameters of trials.

        Parameters
        ----------
        trials
            Trials whose ``params`` contain every name in :attr:`names` and the
            fidelity parameter, if any.

        Returns
        -------
        tuple
            ``X`` of shape ``(n, dim)`` and ``s`` of shape ``(n,)``, ``n = len(trials)``.
        """
        rows = [self._encode_row(trial.params) for trial in trials]
        X = torch.tensor(rows, dtype=_DTYPE).reshape(len(trials), self.dim)
        if self.fidelity_param is None:
            return X, torch.ones(len(trials), dtype=_DTYPE)
        name = self.fidelity_param
        s = [self.fidelity_to_unit(float(self._get(t.params, name))) for t in trials]
        return X, torch.tensor(s, dtype=_DTYPE)

    @staticmethod
    def _get(params: dict[str, Any], name: str) -> Any:
        if name not in params:
            raise ValueError(f"Parameter {name!r} of the search space is missing from `params`.")
        return params[name]

    # ---- decoding ------------------------------------------------------------------------

    def decode(self, x: torch.Tensor, s: float) -> dict[str, Any]:
        """Decode a point to valid parameter values.

        Parameters
        ----------
        x
            Tensor of shape ``(dim,)``; need not be snapped.
        s
            Fidelity in ``[0, 1]``; ignored without a fidelity axis.

        Returns
        -------
        dict
            Parameter name to a value that its distribution contains, for every name in
            :attr:`names` and for the fidelity parameter, if any.
        """
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape ({self.dim},), but got {tuple(x.shape)}.")
        x = x.detach().to(_DTYPE)
        params: dict[str, Any] = {}
        for param in self._params:
            distribution = param.distribution
            if param.kind == _Kind.SINGLE:
                if isinstance(distribution, CategoricalDistribution):
                    params[param.name] = distribution.choices[0]
                else:
                    assert isinstance(distribution, (FloatDistribution, IntDistribution))
                    params[param.name] = distribution.low
            elif param.kind == _Kind.CONTINUOUS:
                params[param.name] = _continuous_value_of_unit(param, float(x[param.columns]))
            elif param.kind == _Kind.GRID:
                index = int(_grid_index_of_unit(param, x[param.columns])[0])
                params[param.name] = _grid_value(distribution, index)
            else:
                assert isinstance(distribution, CategoricalDistribution)
                params[param.name] = distribution.choices[int(torch.argmax(x[param.columns]))]
        if self.fidelity_param is not None:
            params[self.fidelity_param] = self.unit_to_fidelity(s)
        return params

    def snap(self, X: torch.Tensor) -> torch.Tensor:
        """Move points to the encoding of the valid point they decode to.

        Continuous columns are clipped to ``[0, 1]``, grid columns are moved to the encoding of
        their grid value, and each one-hot block becomes the one-hot vector of its argmax.
        ``snap`` is idempotent, and ``decode(snap(X)[i], s) == decode(X[i], s)``.

        Parameters
        ----------
        X
            Tensor of shape ``(n, dim)``.

        Returns
        -------
        torch.Tensor
            Tensor of shape ``(n, dim)``, float64.
        """
        if X.dim() != 2 or X.shape[1] != self.dim:
            raise ValueError(f"`X` must have shape (n, {self.dim}), but got {tuple(X.shape)}.")
        snapped = X.detach().to(_DTYPE).clone()
        for param in self._params:
            block = snapped[:, param.columns]
            if param.kind == _Kind.CONTINUOUS:
                snapped[:, param.columns] = block.clamp(0.0, 1.0)
            elif param.kind == _Kind.GRID:
                snapped[:, param.columns] = _unit_of_grid_index(
                    param, _grid_index_of_unit(param, block)
                )
            elif param.kind == _Kind.CATEGORICAL:
                one_hot = torch.zeros_like(block)
                one_hot.scatter_(1, block.argmax(dim=1, keepdim=True), 1.0)
                snapped[:, param.columns] = one_hot
        return snapped

    def sample_sobol(self, n: int, seed: int) -> torch.Tensor:
        """Draw valid points from a scrambled Sobol sequence.

        One Sobol coordinate is used per parameter with columns: continuous parameters take it
        as is, grid parameters take the value whose cell contains it, and a categorical
        parameter with ``C`` choices takes choice ``floor(C u)``, so that every choice is equally
        likely.

        Parameters
        ----------
        n
            Number of points.
        seed
            Seed of the scrambling.

        Returns
        -------
        torch.Tensor
            Tensor of shape ``(n, dim)``, each row a snapped point.
        """
        active = [param for param in self._params if param.kind != _Kind.SINGLE]
        X = torch.zeros(n, self.dim, dtype=_DTYPE)
        if not active or n == 0:
            return X
        engine = torch.quasirandom.SobolEngine(len(active), scramble=True, seed=seed)
        U = engine.draw(n, dtype=_DTYPE)
        for j, param in enumerate(active):
            u = U[:, j]
            if param.kind == _Kind.CATEGORICAL:
                choice = torch.floor(u * param.n_values).long().clamp(0, param.n_values - 1)
                X[torch.arange(n), param.columns.start + choice] = 1.0
            else:
                X[:, param.columns.start] = u
        return self.snap(X)


def missing_fidelity_message(fidelity_param: str, completed: Sequence[FrozenTrial]) -> str | None:
    """What to tell a user whose ``fidelity_param`` none of the ``completed`` trials has.

    ``None`` unless they have a numeric parameter, which the fidelity may be misspelt as (a
    study of categorical parameters alone has no fidelity to miss).
    """
    numeric = sorted(
        {
            name
            for t in completed
            for name, dist in t.distributions.items()
            if isinstance(dist, FloatDistribution | IntDistribution)
        }
    )
    if not numeric:
        return None
    name = fidelity_param
    return (
        f"ISBOSampler(fidelity_param={name!r}): no completed trial has a parameter "
        f"{name!r}; the numeric parameters of the completed trials are "
        f"{', '.join(map(repr, numeric))}. Until a trial suggests {name!r}, the sampler "
        "runs without a fidelity (as Optuna's GPSampler) and counts every trial as "
        "evaluated at the target. Check the name, or pass fidelity_param=None for a study "
        "without a fidelity."
    )


def left_joint_space_messages(
    trials: Sequence[FrozenTrial],
    joint: dict[str, BaseDistribution],
    already: Container[str],
    proposer: str,
) -> list[tuple[str, str]]:
    """``(name, message)`` for each parameter of ``trials`` that the joint space ``joint`` lacks.

    Such a parameter changed its distribution during the study (a widened range) or is
    missing from some of ``trials`` (added during the study, or conditional); the sampler's
    model ignores it, and ``proposer`` (the independent sampler's class name) proposes its
    values. Parameters in ``already`` (reported before) and those whose every distribution
    holds one value (left out of the joint space on purpose) are skipped.
    """
    distributions: dict[str, list[BaseDistribution]] = {}
    counts: dict[str, int] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in joint or name in already:
                continue
            counts[name] = counts.get(name, 0) + 1
            seen = distributions.setdefault(name, [])
            if dist not in seen:
                seen.append(dist)
    messages = []
    for name, seen in distributions.items():
        if all(dist.single() for dist in seen):
            continue
        reasons = []
        if len(seen) > 1:
            shown = ", ".join(map(str, seen[:3])) + (", ..." if len(seen) > 3 else "")
            reasons.append(f"its distribution changed during the study ({shown})")
        if counts[name] < len(trials):
            reasons.append(
                f"it is missing from {len(trials) - counts[name]} of the {len(trials)} "
                "completed trials"
            )
        messages.append(
            (
                name,
                f"Parameter {name!r} is not in ISBOSampler's joint search space: "
                f"{' and '.join(reasons)}. The model ignores it: {proposer} proposes its "
                "values, and the model's predictions, hence its proposals and the "
                "recommendation's ranking, do not depend on it. Suggest it in every trial with "
                "one distribution for the model to use it, or start a new study.",
            )
        )
    return messages
