"""captum 0.9.0's ``TracInCP`` (Pruthi et al. 2020) as an estimator of this harness: ``captum-tracin``.

How the problem reaches captum: the problem's ``nn.Module`` (:meth:`benchmark.Problem.network_at`), the training set as
a ``TensorDataset``, and as checkpoints the problem's training run replayed (:meth:`benchmark.Problem.trajectory`,
cached with the optimum), handed over as indices that the adapter's ``checkpoints_load_func`` loads into the module,
returning each checkpoint's learning rate, which captum weighs its gradient products with.

Conventions: ``TracInCP.influence((x_test, y_test))`` gives ``Tensor[m, n]`` of ``sum_t lr_t g_test(theta_t)^T
g_i(theta_t)`` with per-example gradients of the loss; a proponent (a training point whose steps lowered the test
loss) scores positive, and removing it raises the test loss, the harness's positive influence; so the harness's
``[m, n]`` is captum's over ``n``, what the harness's ``tracin`` computes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from benchmark import Estimator, Problem, non_negative, positive
from benchmark.peers.adapters import common


@dataclasses.dataclass
class CaptumTracInConfig:
    """Hyperparameters of :class:`CaptumTracIn`.

    Attributes:
        checkpoints: evenly spaced checkpoints of the run's SGD steps, as ``tracin.checkpoints``.
        batch_size: training examples per batch of captum's gradient passes (0: the whole set at once).
        sample_wise_grads_per_batch: captum's per-example gradients from layer hooks on a summed loss (``Linear`` and
            ``Conv2d`` layers only) instead of its default, one backward pass per example.
    """

    checkpoints: int = 5
    batch_size: int = 0
    sample_wise_grads_per_batch: bool = False

    def __post_init__(self) -> None:
        positive(checkpoints=self.checkpoints)
        non_negative(batch_size=self.batch_size)


class CaptumTracIn(Estimator):
    """captum's ``TracInCP`` on ``checkpoints`` checkpoints of the problem's training run.

    What it returns and how it is converted: module docstring. The checkpoints' replay is the ``models_s`` timing; a
    problem without a training run is a recorded failure. No iHVP."""

    name = "captum-tracin"
    Config = CaptumTracInConfig
    no_ihvp = "gradient similarity summed over training checkpoints (captum's TracInCP), no curvature"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        (influence,) = common.require(self.name, "captum", "captum.influence")
        c = self.config
        net = common.network(self.name, problem)
        run = common.checkpoints(self.name, problem, net.module, c.checkpoints, self.progress)
        self.models = run.models

        def load(module: Any, checkpoint: int) -> float:
            module.load_state_dict(run.states[checkpoint])
            return run.lrs[checkpoint]

        def losses(outputs: Tensor, targets: Tensor) -> Tensor:
            return problem.loss(outputs, targets.to(problem.y_train.dtype))

        def summed(outputs: Tensor, targets: Tensor) -> Tensor:
            return losses(outputs, targets).sum()

        # what captum reads to tell a per-example loss from a reducing one
        losses.reduction = "none"  # type: ignore[attr-defined]
        summed.reduction = "sum"  # type: ignore[attr-defined]
        train = DataLoader(
            TensorDataset(problem.x_train, problem.y_train), batch_size=c.batch_size or problem.n_train, shuffle=False
        )
        self._tracin = influence.TracInCP(
            net.module,
            train,
            checkpoints=list(range(len(run.states))),
            checkpoints_load_func=load,
            loss_fn=summed if c.sample_wise_grads_per_batch else losses,
            sample_wise_grads_per_batch=c.sample_wise_grads_per_batch,
        )
        self.diagnostics = {"peer": f"{common.version('captum')} TracInCP", "steps": run.steps, "lrs": run.lrs}

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        x, y = common.test_data(problem, test_indices)
        scores = self._tracin.influence((x, y), show_progress=self.progress)
        return common.to_harness(scores, problem, transpose=False)


ESTIMATORS: list[type[Estimator]] = [CaptumTracIn]
