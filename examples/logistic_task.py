"""An example third-party task plugin: L2-regularised logistic regression on scikit-learn's bundled breast-cancer data.

The objective is strictly convex, so its optimum is unique, full-batch gradient descent reaches it to rounding, and
re-training without a point from the optimum reaches that point's exact leave-one-out minimiser: the one task on
which an influence estimate can be checked against exact refits rather than against a re-training recipe.

Use it with ``bench run --task logistic -p examples.logistic_task`` (from the repository root), or install it under
the ``bench`` entry-point group::

    [project.entry-points.bench]
    logistic = "my_package.logistic_task"
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from benchmark import BuildContext, Problem, Protocol, Recipe, Task, hookimpl
from benchmark.numerics.losses import cross_entropy


@dataclasses.dataclass
class LogisticConfig:
    """Configuration of the logistic-regression task.

    Attributes:
        weight_decay: L2 regulariser of the training objective; positive, so the objective is strictly convex.
        test_fraction: share of the 569 examples held out for testing.
        train_steps: full-batch gradient-descent steps to the optimum.
        lr: learning rate of training and re-training (below 2 / the Hessian's top eigenvalue of about 0.32).
        retrain_steps: leave-one-out re-training steps from the optimum (enough to reach each exact refit).
        test_point: ``max-loss``, ``pNN`` (loss percentile) or a test index.
        eval_size: training points each selection scores.
    """

    weight_decay: float = 0.01
    test_fraction: float = 0.2
    train_steps: int = 5_000
    lr: float = 2.0
    retrain_steps: int = 5_000
    test_point: str | int = "max-loss"
    eval_size: int = 40

    def __post_init__(self) -> None:
        if not self.weight_decay > 0:
            raise ValueError(f"weight_decay must be > 0 (strict convexity), got {self.weight_decay!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for name in ("train_steps", "retrain_steps", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


def load_breast_cancer(seed: int, test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised features and labels, split by ``seed``: ``x_train, y_train, x_test, y_test`` (float64)."""
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    data = sklearn_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


class Logistic(Task):
    """Two-class softmax regression (a linear layer and cross-entropy) with weight decay, float64, full batch."""

    name = "logistic"
    version = 1
    Config = LogisticConfig
    protocol_fields = ("retrain_steps", "test_point", "eval_size")
    cpu_threads = 1  # a 455 x 62 problem: a second thread only adds synchronisation

    def build(self, context: BuildContext) -> Problem:
        c = self.config
        x_train, y_train, x_test, y_test = load_breast_cancer(context.seed, c.test_fraction)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            module = nn.Linear(x_train.shape[1], 2).to(torch.float64)
        problem = Problem.from_module(module, cross_entropy, x_train, y_train, x_test, y_test, c.weight_decay)
        return self.trained(problem.to(device=context.device), Recipe(steps=c.train_steps, lr=c.lr), context)

    def protocol(self) -> Protocol:
        c = self.config
        return Protocol(test_point=c.test_point, eval_size=c.eval_size, retrain=Recipe(steps=c.retrain_steps, lr=c.lr))


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [Logistic]
