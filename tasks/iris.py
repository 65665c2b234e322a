"""``iris``: a small MLP on Iris, where the exact Hessian is cheap (the paper's section 5.1).

Data: scikit-learn's bundled copy of Iris (no network), features standardised with the training split's statistics,
a train/test split fixed by the seed. Optimum: full-batch gradient descent in float64.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from benchmark import Problem, Recipe, Task, hookimpl
from benchmark.config import non_negative, positive
from benchmark.losses import cross_entropy
from benchmark.task import BuildContext, Protocol

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclasses.dataclass
class IrisConfig:
    """Configuration of the Iris task (defaults: the paper's section 5.1).

    Attributes:
        depth: hidden layers.
        width: units per hidden layer.
        activation: ``relu`` or ``tanh``.
        weight_decay: L2 regulariser of the training objective (0 for the paper's "without weight decay").
        test_fraction: share of the 150 examples held out for testing.
        train_steps: full-batch gradient-descent steps to the optimum (paper: 60k).
        lr: learning rate of training and re-training (the paper gives none; 0.5 converges the default net to a
            gradient norm of about 1e-8 in 60k steps, below 2 / top eigenvalue of about 1.9).
        retrain_steps: leave-one-out re-training steps from the optimum (paper: 7.5k).
        test_point: ``max-loss`` (paper), ``pNN`` (loss percentile) or a test index.
        eval_fraction: share of the training points each selection scores (paper: the top 16.6%).
    """

    depth: int = 1
    width: int = 5
    activation: str = dataclasses.field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})
    weight_decay: float = 0.001
    test_fraction: float = 0.2
    train_steps: int = 60_000
    lr: float = 0.5
    retrain_steps: int = 7_500
    test_point: str | int = "max-loss"
    eval_fraction: float = 0.166

    def __post_init__(self) -> None:
        positive(depth=self.depth, width=self.width, lr=self.lr, eval_fraction=self.eval_fraction)
        non_negative(weight_decay=self.weight_decay, train_steps=self.train_steps, retrain_steps=self.retrain_steps)
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


def load_iris(seed: int, test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised Iris features and labels, split by ``seed``: ``x_train, y_train, x_test, y_test``."""
    from sklearn.datasets import load_iris as sklearn_iris

    data = sklearn_iris()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train_ = order[:n_test], order[n_test:]
    mean, std = x[train_].mean(0), x[train_].std(0)
    x = (x - mean) / std
    return x[train_], y[train_], x[test], y[test]


def mlp(depth: int, width: int, activation: str, inputs: int = 4, classes: int = 3) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(width if depth else inputs, classes))
    return nn.Sequential(*layers)


class Iris(Task):
    """MLP classifier on Iris; exact Hessian, full-batch training and re-training."""

    name = "iris"
    version = 1
    Config = IrisConfig
    protocol_fields = ("retrain_steps", "test_point", "eval_fraction")
    # Its tensors are tiny: a second thread gains nothing, and while other processes load the cores, OpenMP's
    # waiting threads made a full-batch Hessian-vector product 100x slower here (250 ms against 1.9 ms).
    cpu_threads = 1

    def build(self, context: BuildContext) -> Problem:
        c = self.config
        x_train, y_train, x_test, y_test = load_iris(context.seed, c.test_fraction)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            module = mlp(c.depth, c.width, c.activation).to(torch.float64)
        problem = Problem.from_module(module, cross_entropy, x_train, y_train, x_test, y_test, c.weight_decay)
        return self.trained(problem.to(device=context.device), Recipe(steps=c.train_steps, lr=c.lr), context)

    def protocol(self) -> Protocol:
        c = self.config
        n_train = 150 - round(c.test_fraction * 150)
        return Protocol(
            test_point=c.test_point,
            eval_size=max(2, round(c.eval_fraction * n_train)),
            retrain=Recipe(steps=c.retrain_steps, lr=c.lr),
        )

    def paper_reference(self, estimator: str, selection: str) -> dict[str, float] | None:
        c = self.config
        paper_setting = (c.depth, c.width, c.activation, c.test_point, c.retrain_steps, selection) == (
            1, 5, "relu", "max-loss", 7_500, "top")
        if estimator != "exact" or not paper_setting:
            return None
        return {"spearman": 0.97 if c.weight_decay > 0 else 0.508}


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [Iris]
