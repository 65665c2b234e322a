"""What every peer adapter shares: importing the peer on first use (a recorded failure naming the install command when
it is missing), the problem's network and loss in the form the peers take, data loaders and checkpoints.

Nothing here imports a peer library at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from benchmark import EstimatorFailed, Network, Problem

INSTALL = "pip install -e '.[peers]'"
"""How the peers are installed: the extra, into a virtual environment of its own (``benchmark/peers/README.md``)."""

PINS = {"dattri": "dattri==0.3.0", "kronfluence": "kronfluence==1.0.1", "captum": "captum==0.9.0"}
"""The releases the adapters are written and tested against (a distribution's name -> its pinned requirement)."""


def require(estimator: str, distribution: str, *modules: str) -> list[ModuleType]:
    """Import ``modules`` of the peer ``distribution`` for ``estimator``; a missing one is the estimator's recorded
    failure, one line naming the package and how to install it (never an import at this module's import)."""
    try:
        return [importlib.import_module(module) for module in modules]
    except ImportError as error:
        raise EstimatorFailed(
            f"{estimator} needs the peer library {distribution} ({error}): {INSTALL} (or pip install "
            f"{PINS[distribution]}) into a virtual environment of its own, see benchmark/peers/README.md"
        ) from error


def version(distribution: str) -> str:
    """``"dattri 0.3.0"``: the installed release of ``distribution``, for the records' diagnostics."""
    try:
        return f"{distribution} {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{distribution} (version unknown)"


def network(estimator: str, problem: Problem) -> Network:
    """The problem's ``nn.Module`` at the optimum (a copy) and its torch loss, checked to name its parameters as
    :attr:`Problem.params` does, in the same order (the flat vectors the peers and the harness exchange); a problem
    without one is the estimator's recorded failure."""
    try:
        net = problem.network_at()
    except NotImplementedError as error:
        raise EstimatorFailed(f"{estimator} runs a peer library on the problem's nn.Module: {error}") from error
    names = [name for name, parameter in net.module.named_parameters() if parameter.requires_grad]
    if names != list(problem.params):
        raise EstimatorFailed(
            f"{estimator}: the network's parameters ({', '.join(names)}) are not the problem's "
            f"({', '.join(problem.params)})"
        )
    return Network(net.module.eval(), net.loss)


def as_batch(problem: Problem, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, y)`` as a batch of the problem's inputs and targets: a single example (the peers' per-example ``vmap``
    strips the batch dimension) gains one, inputs take the problem's dtype and targets the training targets' dtype
    (dattri's LiSSA hands its sampled minibatches over as float32, labels included)."""
    if x.dim() == problem.x_train.dim() - 1:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    return x.to(problem.dtype), y.to(problem.y_train.dtype)


def functional_loss(problem: Problem) -> Callable[[dict[str, Tensor], tuple[Tensor, Tensor]], Tensor]:
    """``loss(params, (x, y))``: the mean of the problem's per-example loss of its model at ``params`` over the batch
    (or the one example) ``(x, y)``, without the weight decay; the ``torch.func`` form dattri takes."""

    def loss(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = as_batch(problem, *data)
        return problem.loss(problem.model(params, x), y).mean()

    return loss


def loader(x: Tensor, y: Tensor, batch_size: int = 0) -> DataLoader:
    """An unshuffled loader of ``(x, y)`` in batches of ``batch_size`` (0: one batch of everything)."""
    return DataLoader(TensorDataset(x, y), batch_size=batch_size or len(x), shuffle=False)


def test_data(problem: Problem, test_indices: Tensor | list[int]) -> tuple[Tensor, Tensor]:
    """The test examples ``test_indices``."""
    indices = torch.as_tensor(test_indices, device=problem.x_test.device)
    return problem.x_test[indices], problem.y_test[indices]


def to_harness(scores: Any, problem: Problem, transpose: bool) -> Tensor:
    """A peer's pairwise scores in this harness's layout and scale: ``Tensor[m, n]`` (transposed from ``[n, m]`` where
    ``transpose``) divided by ``n``, in the problem's dtype and on its device."""
    scores = torch.as_tensor(scores).detach()
    scores = scores.T if transpose else scores
    return (scores.to(device=problem.device, dtype=problem.dtype) / problem.n_train).contiguous()


def state_dict(problem: Problem, module: torch.nn.Module, theta: Tensor) -> dict[str, Tensor]:
    """``module``'s state dict with the parameters ``theta`` (a flat vector of the problem's) and its own buffers."""
    state = {name: value.detach().clone() for name, value in module.state_dict().items()}
    state.update({name: value.detach().clone() for name, value in problem.unflatten(theta.to(problem.theta)).items()})
    return state


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Checkpoints of the problem's training run as state dicts of its network, with their learning rates."""

    states: list[dict[str, Tensor]]
    lrs: list[float]
    steps: list[int]
    models: dict[str, Any]
    """What producing them cost, for :attr:`benchmark.Estimator.models`."""


def checkpoints(estimator: str, problem: Problem, module: torch.nn.Module, count: int, progress: bool) -> Checkpoints:
    """``count`` evenly spaced checkpoints of the run that trained the problem (:meth:`Problem.trajectory`, cached
    with the optimum) as ``module`` state dicts; a problem without a run is the estimator's recorded failure."""
    try:
        trajectory = problem.trajectory(count, progress)
    except (NotImplementedError, ValueError) as error:
        raise EstimatorFailed(f"{estimator} needs the training run's checkpoints: {error}") from error
    states = [state_dict(problem, module, theta) for theta in trajectory.thetas]
    models = {
        "kind": "trajectory",
        "count": len(trajectory.steps),
        "seconds": trajectory.seconds,
        "from_cache": trajectory.from_cache,
    }
    return Checkpoints(states, list(trajectory.lrs), list(trajectory.steps), models)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global random state seeded inside the block and restored after it: peers that sample (LiSSA's
    minibatches, kronfluence's labels, random projections) draw from it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
