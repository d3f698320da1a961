from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

from optuna_isbo.hypergrad import (
    HYPERPARAMETER_NAMES,
    OuterStep,
    Schedules,
    hypergradient,
    learn_schedules,
    minibatch_indices,
    train_with_schedules,
)

BATCH_SIZE = 8
SEED = 3


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (n,), generator=generator)
    return inputs, targets


TRAIN = _data(64, seed=0)
VAL = _data(24, seed=1)


def _model(width: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 3)
    ).double()


def _val_loss_after(schedules: Schedules) -> float:
    model = _model()
    train_with_schedules(model, TRAIN, schedules, batch_size=BATCH_SIZE, seed=SEED)
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(VAL[0]), VAL[1]))


def _unrolled_val_loss(model: torch.nn.Module, values: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Validation loss after an unrolled SGD run, differentiable in ``values`` (3, n_blocks)."""
    per_block = n_steps // values.shape[1]
    params = {
        n: p.detach().clone().requires_grad_(True)
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}
    batches = minibatch_indices(len(TRAIN[0]), BATCH_SIZE, n_steps, SEED)
    for t, index in enumerate(batches):
        lr, momentum, weight_decay = values[:, t // per_block]
        loss = torch.nn.functional.cross_entropy(
            functional_call(model, params, (TRAIN[0][index],), strict=False), TRAIN[1][index]
        )
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        for (name, p), g in zip(list(params.items()), grads, strict=True):
            velocity[name] = momentum * velocity[name] + g + weight_decay * p
            params[name] = p - lr * velocity[name]
    outputs = functional_call(model, params, (VAL[0],), strict=False)
    return torch.nn.functional.cross_entropy(outputs, VAL[1])


SCHEDULES = Schedules(
    lr=(0.3, 0.2, 0.1),
    momentum=(0.5, 0.7, 0.3),
    weight_decay=(0.01, 0.02, 0.005),
    n_steps=12,
)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def test_hypergradient_matches_central_finite_differences() -> None:
    result = hypergradient(_model(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED)
    values = SCHEDULES.as_tensor()
    # Central differences have truncation error O(eps^2 * |f'''|) and rounding error
    # O(1e-16 / eps); eps = 1e-6 keeps both far below the 1e-3 tolerance in float64.
    eps = 1e-6
    finite_differences = torch.zeros_like(values)
    for k in range(3):
        for j in range(SCHEDULES.n_blocks):
            plus, minus = values.clone(), values.clone()
            plus[k, j] += eps
            minus[k, j] -= eps
            finite_differences[k, j] = (
                _val_loss_after(Schedules.from_tensor(plus, SCHEDULES.n_steps))
                - _val_loss_after(Schedules.from_tensor(minus, SCHEDULES.n_steps))
            ) / (2 * eps)
    assert not result.diverged
    assert _relative_error(result.hypergradient, finite_differences) < 1e-3


def test_hypergradient_matches_reverse_mode() -> None:
    result = hypergradient(_model(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED)
    values = SCHEDULES.as_tensor().requires_grad_(True)
    val_loss = _unrolled_val_loss(_model(), values, SCHEDULES.n_steps)
    (expected,) = torch.autograd.grad(val_loss, values)
    assert result.val_loss == pytest.approx(float(val_loss.detach()), rel=1e-12)
    # Both are exact derivatives of the same float64 computation; only the summation order
    # differs, so they agree to rounding, far inside the required 1e-3.
    assert _relative_error(result.hypergradient, expected) < 1e-3
    assert _relative_error(result.hypergradient, expected) < 1e-9


def test_differentiating_a_subset_matches_the_full_hypergradient() -> None:
    full = hypergradient(_model(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED)
    lr_only = hypergradient(
        _model(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED, differentiate=["lr"]
    )
    torch.testing.assert_close(lr_only.hypergradient[0], full.hypergradient[0])
    assert torch.count_nonzero(lr_only.hypergradient[1:]) == 0


def _peak_torch_bytes(fn: Callable[[], object]) -> tuple[int, int]:
    """Peak and final bytes allocated by torch on the CPU while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak, current


def test_memory_does_not_grow_with_horizon() -> None:
    n_short, n_long, n_blocks = 6, 36, 3
    val = (VAL[0][:8], VAL[1][:8])

    def forward_mode(n_steps: int) -> Callable[[], object]:
        schedules = Schedules.constant(n_steps, n_blocks, lr=0.1, momentum=0.5)
        return lambda: hypergradient(_model(), TRAIN, val, schedules, batch_size=BATCH_SIZE)

    short = hypergradient(
        _model(), TRAIN, val, Schedules.constant(n_short, n_blocks, lr=0.1), batch_size=BATCH_SIZE
    )
    long = hypergradient(
        _model(), TRAIN, val, Schedules.constant(n_long, n_blocks, lr=0.1), batch_size=BATCH_SIZE
    )
    assert short.tangents.shape == long.tangents.shape == (3, n_blocks, short.params.numel())

    peak_short, _ = _peak_torch_bytes(forward_mode(n_short))
    peak_long, _ = _peak_torch_bytes(forward_mode(n_long))
    # Anything kept per step (a tensor, an autograd graph) adds at least one float64 per step.
    assert peak_long - peak_short < 8 * (n_long - n_short)

    # The instrument does see horizon-dependent memory: reverse mode through the unrolled run
    # keeps every step's parameters in its graph.
    def reverse_mode(n_steps: int) -> Callable[[], object]:
        values = Schedules.constant(n_steps, n_blocks, lr=0.1).as_tensor().requires_grad_(True)
        return lambda: _unrolled_val_loss(_model(), values, n_steps)

    n_params = short.params.numel()
    reverse_short, _ = _peak_torch_bytes(reverse_mode(n_short))
    reverse_long, _ = _peak_torch_bytes(reverse_mode(n_long))
    assert reverse_long - reverse_short > 8 * n_params * (n_long - n_short)


def test_replaying_schedules_reproduces_the_learned_run() -> None:
    # Momentum 0 in the first block exercises torch.optim.SGD's buffer-less path.
    schedules = Schedules(lr=(0.2, 0.1), momentum=(0.0, 0.8), weight_decay=(0.0, 0.01), n_steps=10)
    result = hypergradient(_model(), TRAIN, VAL, schedules, batch_size=BATCH_SIZE, seed=SEED)

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = schedules.scheduler(optimizer)
    for index in minibatch_indices(len(TRAIN[0]), BATCH_SIZE, schedules.n_steps, SEED):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(TRAIN[0][index]), TRAIN[1][index]).backward()
        optimizer.step()
        scheduler.step()
    replayed = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(replayed, result.params, rtol=1e-12, atol=1e-12)


def test_scheduler_sets_each_steps_values() -> None:
    schedules = Schedules(
        lr=(0.1, 0.2, 0.3), momentum=(0.0, 0.5, 0.9), weight_decay=(1e-3, 0.0, 2e-3), n_steps=6
    )
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    scheduler = schedules.scheduler(optimizer)
    seen = []
    for _ in range(8):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"], group["weight_decay"]))
        scheduler.step()
    assert [s[0] for s in seen] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3]
    assert [s[2] for s in seen] == [1e-3, 1e-3, 0.0, 0.0, 2e-3, 2e-3, 2e-3, 2e-3]
    assert seen[0][1] == pytest.approx(0.0, abs=1e-300)
    assert seen[2][1] == 0.5


def test_learned_schedules_stay_within_bounds_and_improve() -> None:
    records: list[OuterStep] = []
    bounds = {"lr": (0.05, 0.4), "momentum": (0.1, 0.6), "weight_decay": (0.0, 0.02)}
    learned = learn_schedules(
        _model,
        TRAIN,
        VAL,
        n_steps=12,
        n_blocks=3,
        batch_size=BATCH_SIZE,
        n_outer_steps=8,
        lr_init=0.1,
        momentum_init=0.3,
        weight_decay_init=0.01,
        lr_bounds=bounds["lr"],
        momentum_bounds=bounds["momentum"],
        weight_decay_bounds=bounds["weight_decay"],
        # Steps wider than the bounds push every update onto them.
        outer_step_sizes=(1.0, 1.0, 1.0),
        seed=SEED,
        callback=records.append,
    )
    assert [r.index for r in records] == list(range(8))
    for schedules in [learned] + [r.schedules for r in records]:
        for name in HYPERPARAMETER_NAMES:
            low, high = bounds[name]
            assert all(low <= x <= high for x in getattr(schedules, name))
    assert any(r.schedules.lr != records[0].schedules.lr for r in records)
    best = min(r.val_loss for r in records)
    assert best < records[0].val_loss
    assert learned in [r.schedules for r in records if r.val_loss == best]


def _regression_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return inputs, inputs.sum(dim=1, keepdim=True)


def _linear() -> torch.nn.Module:
    return torch.nn.Linear(3, 1).double()


def _squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # torch.nn.functional.mse_loss has no forward-mode derivative of its backward in torch 2.13.
    return ((outputs - targets) ** 2).mean()


def test_divergent_outer_step_is_rejected_and_step_halved() -> None:
    records: list[OuterStep] = []
    learned = learn_schedules(
        _linear,
        _regression_data(32, 0),
        _regression_data(16, 1),
        n_steps=40,
        n_blocks=2,
        batch_size=8,
        n_outer_steps=4,
        lr_init=1e-3,
        lr_bounds=(0.0, 1e300),
        # From lr = 1e-3 the hypergradient asks for a larger rate, and a step of 1e200 makes
        # least squares blow up to inf/nan.
        outer_step_sizes=(1e200, 0.1, 1e-3),
        learn=["lr"],
        loss_fn=_squared_error,
        callback=records.append,
    )
    assert records[0].accepted
    assert not records[1].accepted
    assert math.isnan(records[1].val_loss)
    # After a rejection the retried step is half as long, from the accepted schedules.
    assert max(records[2].schedules.lr) < max(records[1].schedules.lr)
    assert all(math.isfinite(x) for x in learned.lr)
    accepted_losses = [r.val_loss for r in records if r.accepted]
    assert _val_loss_regression(learned) == pytest.approx(min(accepted_losses))


def _val_loss_regression(schedules: Schedules) -> float:
    torch.manual_seed(0)
    model = _linear()
    train_with_schedules(
        model,
        _regression_data(32, 0),
        schedules,
        batch_size=8,
        loss_fn=_squared_error,
    )
    inputs, targets = _regression_data(16, 1)
    with torch.no_grad():
        return float(_squared_error(model(inputs), targets))


def test_all_runs_diverging_raises() -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        learn_schedules(
            _linear,
            _regression_data(32, 0),
            _regression_data(16, 1),
            n_steps=40,
            n_blocks=2,
            batch_size=8,
            n_outer_steps=2,
            lr_init=1e200,
            lr_bounds=(0.0, 1e300),
            loss_fn=_squared_error,
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 10, "n_blocks": 3}, "n_steps"),
        ({"n_steps": 0}, "n_steps"),
        ({"n_blocks": 0}, "n_blocks"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1000}, "batch_size"),
        ({"n_outer_steps": 0}, "n_outer_steps"),
        ({"lr_bounds": (0.5, 0.1)}, "lr_bounds"),
        ({"momentum_bounds": (0.0, 1.0)}, "momentum_bounds"),
        ({"weight_decay_bounds": (-1.0, 0.1)}, "weight_decay_bounds"),
        ({"lr_init": 2.0}, "lr_init"),
        ({"outer_step_sizes": (0.1, 0.0, 0.1)}, "outer_step_sizes"),
        ({"learn": ["learning_rate"]}, "learning_rate"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"n_steps": 12, "n_blocks": 3, "batch_size": BATCH_SIZE}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        learn_schedules(_model, TRAIN, VAL, **arguments)  # type: ignore[arg-type]


def test_schedules_validation() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        Schedules.constant(10, 4, lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        Schedules(lr=(0.1,), momentum=(1.0,), weight_decay=(0.0,), n_steps=4)
    with pytest.raises(ValueError, match="weight_decay"):
        Schedules(lr=(0.1,), momentum=(0.5,), weight_decay=(0.0, 0.0), n_steps=4)
    with pytest.raises(ValueError, match="optimizer"):
        SCHEDULES.scheduler(torch.optim.Adam(_model().parameters()))
    with pytest.raises(ValueError, match="nesterov"):
        optimizer = torch.optim.SGD(_model().parameters(), lr=0.1, momentum=0.9, nesterov=True)
        SCHEDULES.scheduler(optimizer)


def test_minibatch_indices_are_reproducible_epochs() -> None:
    first = list(minibatch_indices(20, 5, 8, seed=7))
    second = list(minibatch_indices(20, 5, 8, seed=7))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # Every epoch of 4 minibatches is a permutation of the 20 examples.
    for epoch in (first[:4], first[4:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(20))
    continued = list(minibatch_indices(20, 5, 8, seed=7, start_step=5))
    assert all(torch.equal(a, b) for a, b in zip(first[5:], continued, strict=True))


# -------------------------------------------------- frozen parameters, what the model needs


def _frozen_first_layer() -> torch.nn.Module:
    model = _model()
    model[0].requires_grad_(False)
    return model


def _replay(model: torch.nn.Module, schedules: Schedules) -> torch.nn.Module:
    train_with_schedules(model, TRAIN, schedules, batch_size=BATCH_SIZE, seed=SEED)
    return model


def _trainable_vector(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def test_frozen_parameters_stay_frozen_as_in_the_replay() -> None:
    result = hypergradient(
        _frozen_first_layer(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED
    )
    replayed = _replay(_frozen_first_layer(), SCHEDULES)
    torch.testing.assert_close(replayed[0].weight, _model()[0].weight, rtol=0, atol=0)
    trainable = sum(p.numel() for p in replayed.parameters() if p.requires_grad)
    assert result.params.shape == result.velocity.shape == (trainable,)
    assert result.tangents.shape == (3, SCHEDULES.n_blocks, trainable)
    torch.testing.assert_close(result.params, _trainable_vector(replayed), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        val_loss = float(torch.nn.functional.cross_entropy(replayed(VAL[0]), VAL[1]))
    assert result.val_loss == pytest.approx(val_loss, rel=1e-12)
    # And the hypergradient is that of the run with the first layer held fixed.
    values = SCHEDULES.as_tensor().requires_grad_(True)
    (expected,) = torch.autograd.grad(
        _unrolled_val_loss(_frozen_first_layer(), values, SCHEDULES.n_steps), values
    )
    assert _relative_error(result.hypergradient, expected) < 1e-9


def test_learned_run_with_frozen_parameters_has_the_replays_loss() -> None:
    records: list[OuterStep] = []
    learned = learn_schedules(
        _frozen_first_layer,
        TRAIN,
        VAL,
        n_steps=12,
        n_blocks=3,
        batch_size=BATCH_SIZE,
        n_outer_steps=2,
        lr_init=0.1,
        seed=SEED,
        callback=records.append,
    )
    for record in records:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = _frozen_first_layer()
        frozen = model[0].weight.detach().clone()
        _replay(model, record.schedules)
        assert torch.equal(model[0].weight, frozen)
        with torch.no_grad():
            val_loss = float(torch.nn.functional.cross_entropy(model(VAL[0]), VAL[1]))
        assert record.val_loss == pytest.approx(val_loss, rel=1e-10)
    assert learned in [r.schedules for r in records]


def _with(*layers: torch.nn.Module) -> Callable[[], torch.nn.Module]:
    def model_fn() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(4, 5), *layers, torch.nn.Linear(5, 3)).double()

    return model_fn


class _Noise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


class _NoParameters(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


@pytest.mark.parametrize(
    ("model_fn", "match"),
    [
        (_NoParameters, r"no trainable parameters"),
        (lambda: _model().requires_grad_(False), r"no trainable parameters"),
        (
            lambda: _with(torch.nn.BatchNorm1d(5))(),
            r"changed \['1.running_mean', '1.running_var', '1.num_batches_tracked'\] of layer "
            r"'1' \(BatchNorm1d\).*model.eval\(\)",
        ),
        (lambda: _with(torch.nn.Dropout(0.3))(), r"layer '1' \(Dropout\).*dropout.*p=0.3"),
        (lambda: _with(_Noise())(), r"draws random numbers"),
    ],
    ids=["parameterless", "all-frozen", "batchnorm-train", "dropout", "noise"],
)
def test_models_that_cannot_be_differentiated_raise_up_front(
    model_fn: Callable[[], torch.nn.Module], match: str
) -> None:
    steps: list[OuterStep] = []
    with pytest.raises(ValueError, match=match):
        learn_schedules(
            model_fn,
            TRAIN,
            VAL,
            n_steps=4,
            n_blocks=2,
            batch_size=BATCH_SIZE,
            n_outer_steps=2,
            callback=steps.append,
        )
    assert steps == []
    model = model_fn()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with pytest.raises(ValueError, match=match):
        hypergradient(model, TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE)
    for name, b in model.named_buffers():  # the probe left the model's buffers alone
        assert torch.equal(b, buffers[name])


@pytest.mark.parametrize(
    ("make_layer", "evaluate"),
    [
        (lambda: torch.nn.BatchNorm1d(5), True),  # running statistics used as constants
        (lambda: torch.nn.BatchNorm1d(5, track_running_stats=False), False),  # batch statistics
        (lambda: torch.nn.Dropout(0.3), True),  # the identity when evaluated
        (lambda: torch.nn.Dropout(0.0), False),
    ],
    ids=["batchnorm-eval", "batchnorm-untracked", "dropout-eval", "dropout-zero"],
)
def test_deterministic_normalization_and_dropout_replay_exactly(
    make_layer: Callable[[], torch.nn.Module], evaluate: bool
) -> None:
    def model_fn() -> torch.nn.Module:
        model = _with(make_layer())()
        generator = torch.Generator().manual_seed(0)
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
        return model.eval() if evaluate else model

    result = hypergradient(model_fn(), TRAIN, VAL, SCHEDULES, batch_size=BATCH_SIZE, seed=SEED)
    replayed = _replay(model_fn(), SCHEDULES)
    assert not result.diverged
    torch.testing.assert_close(result.params, _trainable_vector(replayed), rtol=1e-12, atol=1e-12)


def test_numpy_integers_are_accepted() -> None:
    import numpy as np

    kwargs: dict[str, object] = {"n_outer_steps": 2, "lr_init": 0.1, "seed": SEED}
    reference = learn_schedules(
        _model, TRAIN, VAL, n_steps=12, n_blocks=3, batch_size=BATCH_SIZE, **kwargs
    )
    learned = learn_schedules(
        _model,
        TRAIN,
        VAL,
        n_steps=np.int64(12),  # type: ignore[arg-type]
        n_blocks=np.int32(3),  # type: ignore[arg-type]
        batch_size=np.uint8(BATCH_SIZE),  # type: ignore[arg-type]
        n_outer_steps=np.int16(2),  # type: ignore[arg-type]
        lr_init=0.1,
        seed=np.int64(SEED),  # type: ignore[arg-type]
    )
    assert learned == reference and type(learned.n_steps) is int
    assert type(Schedules.constant(np.int64(4), np.int64(2), lr=0.1).n_steps) is int  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"n_steps": 12.0}, "n_steps must be a positive integer"),
        ({"n_outer_steps": "2"}, "n_outer_steps must be a positive integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": 2**64}, r"seed must lie in"),
    ],
)
def test_non_integral_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"n_steps": 12, "n_blocks": 3, "batch_size": BATCH_SIZE}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        learn_schedules(_model, TRAIN, VAL, **arguments)  # type: ignore[arg-type]


def test_model_fn_must_return_a_module() -> None:
    with pytest.raises(TypeError, match="model_fn must return a torch.nn.Module, got function"):
        learn_schedules(lambda: _model, TRAIN, VAL, n_steps=4, n_blocks=2, batch_size=4)  # type: ignore[arg-type,return-value]


# -------------------------------------------------- losses, data forms and values (issue 30)


def _per_sample_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")


def _per_sample_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, targets, reduction="none")


@pytest.mark.parametrize(
    ("loss_fn", "reference", "regression"),
    [
        (_per_sample_cross_entropy, torch.nn.functional.cross_entropy, False),
        (torch.nn.CrossEntropyLoss(reduction="none"), torch.nn.functional.cross_entropy, False),
        (torch.nn.functional.mse_loss, _squared_error, True),
        (torch.nn.MSELoss(), _squared_error, True),
        (_per_sample_squared_error, _squared_error, True),
    ],
    ids=["ce-none", "ce-module-none", "mse", "mse-module", "mse-none"],
)
def test_per_sample_and_standard_losses_give_the_mean_loss_hypergradient(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    regression: bool,
) -> None:
    if regression:
        make, train, val = _linear, _regression_data(32, 0), _regression_data(16, 1)
    else:
        make, train, val = _model, TRAIN, VAL
    schedules = Schedules.constant(8, 2, lr=0.05, momentum=0.5, weight_decay=1e-3)
    kwargs: dict[str, object] = {"batch_size": BATCH_SIZE, "seed": SEED, "val_batch_size": 5}
    torch.manual_seed(0)
    model = make()
    result = hypergradient(model, train, val, schedules, loss_fn=loss_fn, **kwargs)  # type: ignore[arg-type]
    expected = hypergradient(model, train, val, schedules, loss_fn=reference, **kwargs)  # type: ignore[arg-type]
    assert not result.diverged
    assert result.val_loss == pytest.approx(expected.val_loss, rel=1e-12)
    torch.testing.assert_close(result.hypergradient, expected.hypergradient, rtol=1e-10, atol=0)
    # The replay takes the same loss.
    train_with_schedules(
        model, train, schedules, batch_size=BATCH_SIZE, seed=SEED, loss_fn=loss_fn
    )
    torch.testing.assert_close(_trainable_vector(model), result.params, rtol=1e-12, atol=1e-12)


def test_learn_schedules_accepts_a_per_sample_loss() -> None:
    kwargs: dict[str, object] = {"n_steps": 8, "n_blocks": 2, "batch_size": BATCH_SIZE}
    kwargs.update(n_outer_steps=2, lr_init=0.1, seed=SEED)
    learned = learn_schedules(_model, TRAIN, VAL, loss_fn=_per_sample_cross_entropy, **kwargs)  # type: ignore[arg-type]
    assert learned == learn_schedules(_model, TRAIN, VAL, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("loss_fn", "match"),
    [
        (
            lambda outputs, targets: torch.nn.functional.mse_loss(outputs, targets),
            r"loss_fn \(.*<lambda>\).*ZeroTensors.*reduction='none'.*\*\* 2\)\.mean\(\)",
        ),
        (
            torch.nn.functional.huber_loss,
            r"loss_fn \(torch.nn.functional.huber_loss\).*forward-mode derivative.*huber_loss",
        ),
    ],
    ids=["mse-mean-in-lambda", "huber"],
)
def test_loss_without_forward_mode_derivative_raises_naming_loss_fn(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        learn_schedules(
            _linear,
            _regression_data(32, 0),
            _regression_data(16, 1),
            n_steps=4,
            n_blocks=2,
            batch_size=8,
            n_outer_steps=2,
            loss_fn=loss_fn,
        )


def test_loss_that_is_not_a_tensor_raises() -> None:
    with pytest.raises(TypeError, match="loss_fn .* must return a tensor, got float"):
        learn_schedules(
            _model,
            TRAIN,
            VAL,
            n_steps=4,
            n_blocks=2,
            batch_size=8,
            loss_fn=lambda o, t: 1.0,  # type: ignore[arg-type,return-value]
        )


def _with_value(data: tuple[torch.Tensor, torch.Tensor], part: int, value: float) -> tuple:
    tensors = [data[0].clone(), data[1].clone().to(torch.float64)]
    tensors[part][3].view(-1)[0] = value
    return tensors[0], tensors[1]


@pytest.mark.parametrize(
    ("train", "val", "match"),
    [
        (TRAIN, (_with_value(VAL, 0, math.nan)[0], VAL[1]), r"val_data\[0\] \(inputs\)"),
        ((_with_value(TRAIN, 0, math.inf)[0], TRAIN[1]), VAL, r"train_data\[0\] \(inputs\)"),
        (
            _regression_data(32, 0),
            _with_value(_regression_data(16, 1), 1, -math.inf),
            r"val_data\[1\] \(targets\)",
        ),
    ],
    ids=["nan-val-inputs", "inf-train-inputs", "inf-val-targets"],
)
def test_non_finite_data_is_refused_naming_the_argument(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], match: str
) -> None:
    regression = train[1].is_floating_point()
    with pytest.raises(ValueError, match=match + r" holds non-finite values .* row 3"):
        learn_schedules(
            _linear if regression else _model,
            train,
            val,
            n_steps=4,
            n_blocks=2,
            batch_size=8,
            n_outer_steps=2,
            loss_fn=_squared_error if regression else torch.nn.functional.cross_entropy,
        )


def test_numpy_arrays_and_lists_are_converted() -> None:
    kwargs: dict[str, object] = {"n_steps": 8, "n_blocks": 2, "batch_size": BATCH_SIZE}
    kwargs.update(n_outer_steps=2, lr_init=0.1, seed=SEED)
    reference = learn_schedules(_model, TRAIN, VAL, **kwargs)  # type: ignore[arg-type]
    as_numpy = (TRAIN[0].numpy(), TRAIN[1].numpy())
    as_lists = (VAL[0].tolist(), VAL[1].tolist())
    assert learn_schedules(_model, as_numpy, as_lists, **kwargs) == reference  # type: ignore[arg-type]
    # float32 inputs take the model's dtype, int32 class indices become torch.long.
    narrow = (TRAIN[0].numpy().astype("float32"), TRAIN[1].numpy().astype("int32"))
    learned = learn_schedules(_model, narrow, VAL, **kwargs)  # type: ignore[arg-type]
    assert all(math.isfinite(x) for x in learned.lr)
    model = _model()
    train_with_schedules(model, narrow, learned, batch_size=BATCH_SIZE, seed=SEED)


@pytest.mark.parametrize(
    ("train", "match"),
    [
        (
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*TRAIN), batch_size=8),
            r"train_data must be the whole data set .* got a DataLoader.*loader\.dataset",
        ),
        ({"inputs": TRAIN[0], "targets": TRAIN[1]}, r"train_data must be .* got a dict"),
        ((TRAIN[0], "labels"), r"train_data\[1\] \(targets\) must be a tensor"),
    ],
    ids=["dataloader", "dict", "string-targets"],
)
def test_data_in_other_forms_is_refused_saying_what_to_pass(train: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        learn_schedules(_model, train, VAL, n_steps=4, n_blocks=2, batch_size=8)  # type: ignore[arg-type]
