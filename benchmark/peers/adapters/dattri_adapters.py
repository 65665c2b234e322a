"""dattri 0.3.0's attributors as estimators of this harness: ``dattri-explicit``, ``dattri-cg``, ``dattri-lissa``
(``IFAttributorExplicit``, ``IFAttributorCG``, ``IFAttributorLiSSA``), ``dattri-tracin`` (``TracInAttributor`` on the
problem's training checkpoints) and ``dattri-trak`` (``TRAKAttributor``).

How the problem reaches dattri: an ``AttributionTask`` whose model is the problem's ``nn.Module`` at the optimum
(:meth:`benchmark.Problem.network_at`) and whose loss is the mean of the problem's per-example loss over a batch
(``torch.func`` style, without the weight decay); the training set is one unshuffled batch (dattri's influence
attributors add up the iHVPs they solve on separate batches of their ``cache`` loader, and solve again for every
training batch of ``attribute``), the test points another.

dattri's conventions, and what the adapters make of them (``n`` training points, ``P`` the Hessian of the mean
training loss, ``g`` per-example loss gradients without the weight decay):

* ``attribute`` returns ``Tensor[n, m]`` in float32 (its output buffer's dtype, whatever the model's), the
  influence attributors ``g_i^T (P + r I)^-1 g_test``: the harness's ``[m, n]`` is its transpose over ``n``, cast to
  the problem's dtype. Same sign: both are positive for a training point whose removal raises the test loss.
* ``regularization`` ``r`` is added to the Hessian of the loss without the weight decay, so ``r = damping +
  weight_decay`` targets the harness's ``(H + damping I)^-1`` (the objective's weight decay adds ``weight_decay I``
  to ``H``).
* the influence attributors' ``transform_test_rep`` is their iHVP on a ``Tensor[m, P]`` of vectors (in
  ``named_parameters`` order, the order of ``theta``), which these adapters expose as :meth:`~DattriInfluence.ihvp`,
  so their records carry the parameter-change and iHVP-residual diagnostics like the harness's own estimators.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from benchmark import Estimator, EstimatorFailed, Problem, non_negative, positive
from benchmark.peers.adapters import common

MODES = ("rev-rev", "rev-fwd")
"""dattri's ways to take a Hessian-vector product: two reverse passes, or reverse over forward."""
PROJECTIONS = ("normal", "rademacher")
"""dattri's random projections on the CPU."""


@contextmanager
def quiet(progress: bool, *modules: ModuleType) -> Iterator[None]:
    """dattri's progress bars (``tqdm`` in its attributor modules) follow the harness's ``progress``: off unless the
    run shows progress."""
    saved = {module: getattr(module, "tqdm") for module in modules if hasattr(module, "tqdm")}  # noqa: B009
    if progress:
        yield
        return
    try:
        for module, bar in saved.items():
            setattr(module, "tqdm", functools.partial(bar, disable=True))  # noqa: B010
        yield
    finally:
        for module, bar in saved.items():
            setattr(module, "tqdm", bar)  # noqa: B010


def attribution_task(
    problem: Problem, net: Any, task_module: ModuleType, target: Any = None, states: Any = None
) -> Any:
    """dattri's ``AttributionTask`` on the problem's network (``net``) with its mean loss, or ``target`` as both its
    loss and target function, at the optimum or at the state dicts ``states``."""
    loss = common.functional_loss(problem) if target is None else target
    checkpoints = net.module.state_dict() if states is None else states
    return task_module.AttributionTask(loss_func=loss, model=net.module, checkpoints=checkpoints)


# -- the influence-function attributors --------------------------------------------------------------------------------
@dataclasses.dataclass
class DattriExplicitConfig:
    """Hyperparameters of :class:`DattriExplicit`.

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1`` (dattri's ``regularization`` is ``lambda`` plus the problem's
            weight decay).
    """

    damping: float = 0.001

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)


class DattriInfluence(Estimator):
    """Base of the adapters of dattri's influence-function attributors (the module docstring states the
    conventions): :meth:`make` builds the attributor, this class feeds it and converts its answers."""

    damping_field = "damping"
    attributor: ClassVar[str]
    """The class in ``dattri.algorithm.influence_function``."""

    def make(self, functions: ModuleType, task: Any, regularization: float) -> Any:
        """The attributor, given the task and ``regularization`` (``damping + weight_decay``)."""
        return getattr(functions, self.attributor)(task=task, device="cpu", regularization=regularization)

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        functions, task_module, base = common.require(
            self.name, "dattri", "dattri.algorithm.influence_function", "dattri.task", "dattri.algorithm.base"
        )
        self._base = base
        net = common.network(self.name, problem)
        task = attribution_task(problem, net, task_module)
        self._attributor = self.make(functions, task, self.config.damping + problem.weight_decay)
        self._attributor.device = str(problem.device)
        self._train = common.loader(problem.x_train, problem.y_train)
        self._attributor.cache(self._train)
        self.diagnostics = {"peer": f"{common.version('dattri')} {self.attributor}"}

    def _seed(self) -> int:
        return int(getattr(self.config, "seed", 0))

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        tests = common.loader(*common.test_data(problem, test_indices))
        with common.seeded(self._seed()), quiet(self.progress, self._base):
            scores = self._attributor.attribute(self._train, tests)
        return common.to_harness(scores, problem, transpose=True)

    def ihvp(self, vectors: Tensor) -> Tensor:
        self._require_problem()
        with common.seeded(self._seed()), torch.no_grad():
            solutions = self._attributor.transform_test_rep(0, vectors)
        return torch.as_tensor(solutions).detach().to(vectors.dtype)


class DattriExplicit(DattriInfluence):
    """dattri's ``IFAttributorExplicit``: the dense Hessian of the mean training loss plus ``regularization I``,
    inverted.

    The Hessian (``torch.func.hessian``) is built again on every call (the scores, and the iHVPs of the diagnostics);
    it needs ``P x P`` memory. Scores: ``attribute``'s ``[n, m]`` transposed over ``n`` (module docstring). No
    hyperparameter beyond the damping."""

    name = "dattri-explicit"
    Config = DattriExplicitConfig
    attributor = "IFAttributorExplicit"


@dataclasses.dataclass
class DattriCGConfig:
    """Hyperparameters of :class:`DattriCG`.

    Attributes:
        damping: ``lambda`` (dattri's ``regularization`` is ``lambda`` plus the problem's weight decay).
        max_iter: CG iterations, all of them run: dattri 0.3.0 accepts a ``tol`` but does not use it. dattri's
            default, 10.
        mode: how dattri takes its Hessian-vector products, one of :data:`MODES` (its default ``rev-rev``).
    """

    damping: float = 0.001
    max_iter: int = 10
    mode: str = dataclasses.field(default="rev-rev", metadata={"choices": MODES})

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(max_iter=self.max_iter)


class DattriCG(DattriInfluence):
    """dattri's ``IFAttributorCG``: conjugate gradient on ``H_loss + regularization I`` for ``max_iter`` iterations.

    One independent solve per right-hand side (``vmap``), started from ``t_0 = v``, every iteration run (no stopping
    rule). Scores: ``attribute``'s ``[n, m]`` transposed over ``n`` (module docstring)."""

    name = "dattri-cg"
    Config = DattriCGConfig
    attributor = "IFAttributorCG"

    def make(self, functions: ModuleType, task: Any, regularization: float) -> Any:
        c = self.config
        return functions.IFAttributorCG(
            task=task, device="cpu", max_iter=c.max_iter, mode=c.mode, regularization=regularization
        )


@dataclasses.dataclass
class DattriLissaConfig:
    """Hyperparameters of :class:`DattriLissa` (dattri's defaults, but the damping).

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1``; dattri's own ``damping`` ``d`` is ``(lambda + weight_decay) /
            scaling`` (its recursion's fixed point is ``(H_loss + d * scaling I)^-1 v``).
        scaling: dattri's ``scaling`` ``s``: the recursion contracts only while ``s`` exceeds half the largest
            eigenvalue of the minibatch Hessians (our ``lissa.scale``).
        recursion_depth: recursion steps per repeat.
        num_repeat: independent recursions averaged.
        batch_size: training examples per minibatch Hessian (sampled independently at each step).
        seed: seed of torch's global random state while dattri samples its minibatches.
        mode: how dattri takes its Hessian-vector products, one of :data:`MODES`.
    """

    damping: float = 0.001
    scaling: float = 50.0
    recursion_depth: int = 5000
    num_repeat: int = 1
    batch_size: int = 1
    seed: int = 0
    mode: str = dataclasses.field(default="rev-rev", metadata={"choices": MODES})

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(
            scaling=self.scaling,
            recursion_depth=self.recursion_depth,
            num_repeat=self.num_repeat,
            batch_size=self.batch_size,
        )


class DattriLissa(DattriInfluence):
    """dattri's ``IFAttributorLiSSA``: the stochastic Neumann series ``h <- v + (1 - d) h - H_B h / s``, result
    ``h / s``.

    ``H_B`` is the Hessian of a sampled minibatch at each of ``recursion_depth`` steps; at its fixed point the result
    is ``(H_loss + d s I)^-1 v``, and ``d = (damping + weight_decay) / s`` makes it the harness's ``(H + damping
    I)^-1``. dattri hands its sampled minibatches
    to the loss as float32 (labels too); the adapter's loss casts them back to the problem's dtypes, so it runs on
    float64 models. Scores: ``attribute``'s ``[n, m]`` transposed over ``n`` (module docstring); seeded by ``seed``.
    A ``scaling`` below the minibatch Hessians' top eigenvalues diverges: non-finite scores, a recorded failure."""

    name = "dattri-lissa"
    Config = DattriLissaConfig
    attributor = "IFAttributorLiSSA"

    def make(self, functions: ModuleType, task: Any, regularization: float) -> Any:
        c = self.config
        return functions.IFAttributorLiSSA(
            task=task,
            device="cpu",
            batch_size=c.batch_size,
            num_repeat=c.num_repeat,
            recursion_depth=c.recursion_depth,
            damping=regularization / c.scaling,
            scaling=c.scaling,
            mode=c.mode,
        )


# -- TracIn and TRAK ---------------------------------------------------------------------------------------------------
def projector(dimension: int, seed: int, kind: str, device: torch.device) -> dict[str, Any] | None:
    """dattri's ``projector_kwargs`` for a random projection to ``dimension`` (``None``: none). A fresh dict: dattri
    0.3.0's attributors update their module's default dict in place when given one, so the adapters set it after
    construction instead."""
    if dimension == 0:
        return None
    return {
        "proj_dim": dimension,
        "proj_max_batch_size": 32,
        "proj_seed": seed,
        "proj_type": kind,
        "device": str(device),
    }


@dataclasses.dataclass
class DattriTracInConfig:
    """Hyperparameters of :class:`DattriTracIn`.

    Attributes:
        checkpoints: evenly spaced checkpoints of the run's SGD steps (:meth:`benchmark.Problem.trajectory`), as
            ``tracin.checkpoints``.
        projection_dim: dattri's random projection of the gradients to this many dimensions (its default 512); 0
            projects nothing, so the scores are exact TracInCP (the harness's ``tracin``).
        projection: the projection's distribution, one of :data:`PROJECTIONS`.
        seed: the projection's seed.
    """

    checkpoints: int = 5
    projection_dim: int = 0
    projection: str = dataclasses.field(default="normal", metadata={"choices": PROJECTIONS})
    seed: int = 0

    def __post_init__(self) -> None:
        positive(checkpoints=self.checkpoints)
        non_negative(projection_dim=self.projection_dim)


class DattriTracIn(Estimator):
    """dattri's ``TracInAttributor`` on ``checkpoints`` checkpoints of the problem's training run.

    The checkpoints' learning rates are its ``weight_list``, so it returns ``sum_t lr_t g_i(theta_t)^T
    g_test(theta_t)``, ``[n, m]``; the harness's ``[m, n]`` is
    its transpose over ``n``, with TracIn's sign (a proponent, whose steps lowered the test loss, is positive; removing
    it raises the test loss), which is the harness's ``tracin``. The checkpoints come from the cached replay of the
    run (their cost is the ``models_s`` timing); a problem without a training run is a recorded failure. No iHVP."""

    name = "dattri-tracin"
    Config = DattriTracInConfig
    no_ihvp = "gradient similarity summed over training checkpoints (dattri's TracInAttributor), no curvature"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        tracin, task_module = common.require(self.name, "dattri", "dattri.algorithm.tracin", "dattri.task")
        self._module = tracin
        c = self.config
        net = common.network(self.name, problem)
        run = common.checkpoints(self.name, problem, net.module, c.checkpoints, self.progress)
        self.models = run.models
        task = attribution_task(problem, net, task_module, states=run.states)
        weights = torch.tensor(run.lrs, dtype=problem.dtype)
        self._attributor = tracin.TracInAttributor(
            task=task, weight_list=weights, normalized_grad=False, device=str(problem.device)
        )
        self._attributor.projector_kwargs = projector(c.projection_dim, c.seed, c.projection, problem.device)
        self._train = common.loader(problem.x_train, problem.y_train)
        self.diagnostics = {"peer": f"{common.version('dattri')} TracInAttributor", "steps": run.steps, "lrs": run.lrs}

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        tests = common.loader(*common.test_data(problem, test_indices))
        with quiet(self.progress, self._module):
            scores = self._attributor.attribute(self._train, tests)
        return common.to_harness(scores, problem, transpose=True)


def margins(loss: nn.Module, problem: Problem) -> Any:
    """TRAK's model output per example, ``(outputs, y) -> Tensor[N]``: the margin ``f = log(p / (1 - p))`` of the
    correct label. From the logits where the problem's torch ``loss`` says what they are (``CrossEntropyLoss``:
    ``logit_y - logsumexp_{c != y} logit_c``; ``BCEWithLogitsLoss``: ``(2y - 1) logit``), as the harness's ``trak``
    computes it; otherwise from the per-example loss read as a negative log-likelihood ``l = -log p``:
    ``-l - log(1 - exp(-l))``."""
    if isinstance(loss, nn.CrossEntropyLoss):

        def multiclass(outputs: Tensor, y: Tensor) -> Tensor:
            correct = outputs.gather(1, y.long().unsqueeze(1)).squeeze(1)
            others = outputs.scatter(1, y.long().unsqueeze(1), float("-inf"))
            return correct - torch.logsumexp(others, dim=1)

        return multiclass
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return lambda outputs, y: ((2 * y - 1) * outputs).reshape(len(outputs))

    def from_loss(outputs: Tensor, y: Tensor) -> Tensor:
        nll = problem.loss(outputs, y)
        return -nll - torch.log(-torch.expm1(-nll))

    return from_loss


def trak_functions(loss: nn.Module, problem: Problem) -> tuple[Any, Any]:
    """TRAK's output function and the probability of the correct label (``sigmoid`` of the margin) as dattri takes
    them: ``torch.func`` functions of the parameters and one example ``(x, y)`` (or a batch, summed)."""
    margin = margins(loss, problem)

    def output(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = common.as_batch(problem, *data)
        return margin(problem.model(params, x), y).sum()

    def probability(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = common.as_batch(problem, *data)
        return torch.sigmoid(margin(problem.model(params, x), y)).sum()

    return output, probability


@dataclasses.dataclass
class DattriTRAKConfig:
    """Hyperparameters of :class:`DattriTRAK` (named as the harness's ``trak`` names them).

    Attributes:
        projection_dim: ``k``, dattri's ``proj_dim`` (its default 512). At ``k >= P`` the gradients are not projected
            (dattri's ``identity`` projector), as the harness's ``trak`` does: a projection to as many dimensions or
            more loses nothing.
        models: how many independently trained models to average over (:meth:`benchmark.Problem.ensemble`, as
            ``trak.models``; 1 is the optimum alone and trains nothing), handed to dattri as its checkpoints.
        subset_fraction: the share of the training set each ensemble member is trained on (``trak.subset_fraction``).
        projection: the projection's distribution, one of :data:`PROJECTIONS` (dattri's default ``normal``).
        seed: the projection's seed.
        regularization: ``lambda`` added to ``Phi^T Phi`` of the (projected) margin gradients, as
            ``trak.regularization``; dattri divides the gradients by ``sqrt(P)`` first, so its own ``regularization``
            is this over ``P``. At 0 (dattri's default) a singular ``Phi^T Phi`` is a recorded failure, as on
            Iris unprojected: its 120 training points' margin gradients span 20 of the 43 dimensions (singular values
            0.21, then 2e-9; a constant added to every logit moves no margin, for one).
    """

    projection_dim: int = 512
    models: int = 1
    subset_fraction: float = 1.0
    projection: str = dataclasses.field(default="normal", metadata={"choices": PROJECTIONS})
    seed: int = 0
    regularization: float = 0.0

    def __post_init__(self) -> None:
        non_negative(seed=self.seed, regularization=self.regularization)
        positive(projection_dim=self.projection_dim, models=self.models, subset_fraction=self.subset_fraction)
        if self.subset_fraction > 1:
            raise ValueError(f"subset_fraction={self.subset_fraction} must be at most 1")


class DattriTRAK(Estimator):
    """dattri's ``TRAKAttributor`` on the optimum, or on an ensemble of models trained like it.

    ``tau_i = [(1/M) sum_m phi_m(z)^T (Phi_m^T Phi_m + lambda I)^-1 phi_m(x_i)] [(1/M) sum_m (1 - p_m(x_i))]`` with
    ``phi`` the (projected) gradients of the margin ``f = log(p / (1 - p))`` of the correct label (:func:`margins`)
    and ``M`` the models, dattri's checkpoints.

    **Convention.** ``tau_i`` estimates how much the presence of training point ``i`` raises the test point's
    margin. Removing ``i`` then changes the test loss ``-log p`` by about ``(1 - p(z)) tau_i`` (``dloss/df = -(1 -
    p)``), so the harness's ``[m, n]`` is ``attribute``'s ``[n, m]`` transposed and each row multiplied by its test
    point's ``1 - p`` at the optimum: TRAK's sign, a positive number per row, the harness's ``trak``'s convention. No
    ``1/n``: ``Phi^T Phi`` sums over the training set. Its scale is TRAK's (the kernel lacks the Gauss-Newton
    matrix's ``(1 - p)^2`` weights), so only orders and correlations compare. What training the ensemble cost is the
    ``models_s`` timing. No iHVP.
    """

    name = "dattri-trak"
    Config = DattriTRAKConfig
    no_ihvp = "projected margin gradients with a least-squares solve per model (dattri's TRAKAttributor), no Hessian"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        trak, task_module = common.require(self.name, "dattri", "dattri.algorithm.trak", "dattri.task")
        self._module = trak
        c = self.config
        net = common.network(self.name, problem)
        states = None
        if c.models > 1 or c.subset_fraction < 1:
            states = self._ensemble(problem, net.module)
        output, probability = trak_functions(net.loss, problem)
        self._probability = probability
        task = attribution_task(problem, net, task_module, target=output, states=states)
        self._attributor = trak.TRAKAttributor(
            task=task,
            correct_probability_func=probability,
            device=str(problem.device),
            regularization=c.regularization / problem.n_params,
        )
        projected = c.projection_dim < problem.n_params
        self._attributor.projector_kwargs = projector(
            c.projection_dim if projected else problem.n_params,
            c.seed,
            c.projection if projected else "identity",
            problem.device,
        )
        try:
            with quiet(self.progress, trak):
                self._attributor.cache(common.loader(problem.x_train, problem.y_train))
        except torch.linalg.LinAlgError as error:
            raise EstimatorFailed(
                f"{self.name}: Phi^T Phi of the training points' margin gradients is singular ({error}); set "
                f"{self.name}.regularization above 0, or a projection_dim below the gradients' rank"
            ) from error
        self.diagnostics = {
            "peer": f"{common.version('dattri')} TRAKAttributor",
            "models": c.models,
            "projection_dim": c.projection_dim if projected else problem.n_params,
            "projected": projected,
        }

    def _ensemble(self, problem: Problem, module: nn.Module) -> list[dict[str, Tensor]]:
        """The ensemble's members as state dicts of ``module``; a problem that cannot train one is a recorded
        failure."""
        c = self.config
        try:
            members = problem.ensemble(c.models, c.subset_fraction, self.progress)
        except (NotImplementedError, ValueError) as error:
            raise EstimatorFailed(f"{self.name} needs an ensemble of {c.models} models: {error}") from error
        self.models = {
            "kind": "ensemble",
            "count": c.models,
            "seconds": members.seconds,
            "from_cache": members.from_cache == c.models,
        }
        return [common.state_dict(problem, module, theta) for theta in members.thetas]

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        x, y = common.test_data(problem, test_indices)
        with quiet(self.progress, self._module):
            scores = self._attributor.attribute(common.loader(x, y))
        with torch.no_grad():
            to_loss = 1 - torch.stack([self._probability(problem.params, (x[j], y[j])) for j in range(len(x))])
        scores = common.to_harness(scores, problem, transpose=True) * problem.n_train
        return scores * to_loss.to(scores).unsqueeze(1)


ESTIMATORS: list[type[Estimator]] = [DattriExplicit, DattriCG, DattriLissa, DattriTracIn, DattriTRAK]
