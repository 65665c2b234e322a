"""The problem contract: what a task hands to estimators and to the ground truth.

Every piece of curvature maths in the harness goes through :class:`Problem`, written with ``torch.func``
(``functional_call``, ``grad``, ``jvp``, ``vmap``), on a flat parameter vector ``theta`` of length ``P``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vjp, vmap

from benchmark.common.cache import Cache
from benchmark.numerics.data_convolution import data_convolutions

Model = Callable[[dict[str, Tensor], Tensor], Tensor]
"""A functional model: ``model(params, x) -> outputs``, e.g. ``torch.func.functional_call(module, params, (x,))``."""

Loss = Callable[[Tensor, Tensor], Tensor]
"""A per-example loss: ``loss(outputs, targets) -> Tensor[N]`` (no reduction)."""


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Checkpoints of a training run (:meth:`Problem.trajectory`).

    Attributes:
        steps: the update after which each checkpoint was taken (1-based, counted over the run's SGD phases).
        lrs: the learning rate of the update that produced each checkpoint.
        thetas: ``Tensor[count, P]``, the parameters at each checkpoint, in the problem's dtype.
        seconds: what replaying the run to produce the checkpoints cost when it was done (kept with them in the cache,
            so a run that loads them still reports their cost).
        from_cache: whether they were loaded rather than produced now.
    """

    steps: list[int]
    lrs: list[float]
    thetas: Tensor
    seconds: float
    from_cache: bool


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Models trained like a problem's optimum from other initialisations (:meth:`Problem.ensemble`).

    Attributes:
        seeds: each member's seed (its initialisation and minibatch order); the first is the optimum's own seed where
            the optimum is a member (``subset_fraction`` 1).
        subset_fraction: the share of the training set each retrained member was trained on (TRAK's ``alpha``).
        thetas: ``Tensor[count, P]``, each member's parameters, in the problem's dtype.
        seconds: what training the members cost when they were trained (kept with them in the cache); 0 for the
            optimum itself, which the task paid for.
        from_cache: how many members were loaded rather than trained now (the optimum counts as loaded).
        seconds_now: the part of ``seconds`` spent in this call, training the members that were not cached.
    """

    seeds: list[int]
    subset_fraction: float
    thetas: Tensor
    seconds: float
    from_cache: int
    seconds_now: float = 0.0


class CheckpointSource(Protocol):
    """What hands out the models of a problem's training run (:class:`benchmark.numerics.trajectory.TrainingRun`):
    checkpoints along it and an ensemble of runs like it."""

    def checkpoints(self, count: int, progress: bool = False) -> Trajectory:
        """``count`` evenly spaced checkpoints of the run."""
        ...

    def ensemble(self, count: int, subset_fraction: float = 1.0, progress: bool = False) -> Ensemble:
        """``count`` models trained like the run from other initialisations (and subsets)."""
        ...

    def without_cache(self) -> CheckpointSource:
        """The same run, producing its checkpoints and models afresh on every call (for timing what they cost)."""
        ...

    def with_optimum(self, optimum: Tensor) -> CheckpointSource:
        """The same run ending at ``optimum`` (after a later polish), the first member of a whole-set ensemble."""
        ...


LAYERS = ("all", "last")
"""The layer selections an estimator may restrict its curvature to (:meth:`Problem.layer_parameters`): every
parameter, or the last module's (its weight and bias)."""


@dataclasses.dataclass(frozen=True)
class Network:
    """The ``nn.Module`` behind a problem's functional model, with its loss as a torch loss module: what estimators
    that work layer by layer need (K-FAC and EK-FAC hook the ``Linear`` and ``Conv2d`` modules).

    Attributes:
        module: the network: ``model(params, x) == functional_call(module, params, (x,))``.
        loss: a torch loss module (``CrossEntropyLoss``, ``BCEWithLogitsLoss``, ...) whose ``reduction="mean"`` over
            a batch equals the mean of the problem's per-example ``loss`` over it.
    """

    module: torch.nn.Module
    loss: torch.nn.Module


@dataclasses.dataclass
class Problem:
    """A trained model and the objective it was trained on.

    The training objective, whose Hessian ``H`` every estimator inverts, is::

        J(theta) = (1/n) sum_i loss(model(theta, x_i), y_i) + (weight_decay / 2) * ||theta||^2

    so ``weight_decay`` has the meaning of ``torch.optim.SGD(weight_decay=...)`` and adds ``weight_decay * I`` to ``H``.
    The model must treat examples independently (no batch statistics), so per-example gradients are well defined.

    Attributes:
        model: functional model ``(params, x) -> outputs``.
        loss: per-example loss ``(outputs, targets) -> Tensor[N]``.
        params: parameters at the optimum ``theta*``, by name.
        x_train, y_train: the ``n`` training examples.
        x_test, y_test: the test examples.
        weight_decay: the L2 regulariser that is part of the training objective.
        chunk_size: training examples per pass in the full-data products (HVPs, gradient products); ``None``
            takes the whole set at once. A task sets it so that one chunk's activations fit in memory. Products
            along ``m`` vectors side by side take ``chunk_size // m`` examples per pass, for the same bound.
        curvature_cache: a cache and the key of this trained problem (set by :meth:`Task.trained`), under which
            curvature that is costly to recompute (the dense Hessian) is kept on disk; ``None`` keeps nothing.
        network: the ``nn.Module`` and torch loss behind ``model`` and ``loss`` (:meth:`from_module` with
            ``loss_module``), read through :meth:`network_at`; ``None`` where the task states none, and then
            estimators that need the layers fail with the reason.
        frozen: parameters the model takes that are held fixed, not part of ``theta`` (set by :meth:`restricted`;
            empty for a task's problem).
        training_run: how the optimum was trained (set by :meth:`benchmark.Task.trained`), which
            :meth:`trajectory` replays for checkpoints and :meth:`ensemble` runs again from other initialisations;
            ``None`` where the task trains otherwise (or not at all).
    """

    model: Model
    loss: Loss
    params: dict[str, Tensor]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    weight_decay: float = 0.0
    chunk_size: int | None = None
    curvature_cache: tuple[Cache, dict[str, Any]] | None = dataclasses.field(default=None, repr=False, compare=False)
    network: Network | None = dataclasses.field(default=None, repr=False, compare=False)
    frozen: dict[str, Tensor] = dataclasses.field(default_factory=dict, repr=False)
    training_run: CheckpointSource | None = dataclasses.field(default=None, repr=False, compare=False)

    PASS_BYTES: ClassVar[int] = 32 * 2**20
    """What one pass of the in-memory products may hold per example times examples (the kept graph's pieces on the
    CPU, the training-side passes): 32 MiB, glibc's largest threshold for serving an allocation with fresh pages.
    Larger tensors are mapped from the kernel on every allocation and handed back on every free, so a backward pass
    over all 5,500 MNIST images in one piece spends most of its time in page faults; in pieces of this size the heap
    reuses its memory. Measured, with the kernel's share of each time: ``leaderboards/speed-blocks.md`` (rows "kept
    graph in one piece" against "kept graph in N pieces")."""
    MIN_PASS_ROWS: ClassVar[int] = 64
    """The fewest examples in such a pass, so that the per-pass overhead of autograd stays small."""
    GRADIENT_BYTES: ClassVar[int] = 2**28
    """What an estimator's per-example gradients held at once may take (:meth:`gradient_rows`): 256 MiB."""
    MAX_GRADIENT_ROWS: ClassVar[int] = 256
    """The most per-example gradients held at once (:meth:`gradient_rows`): the activations ``vmap`` keeps for their
    backward pass grow with the examples in a chunk."""

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        loss: Loss,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        weight_decay: float = 0.0,
        chunk_size: int | None = None,
        loss_module: torch.nn.Module | None = None,
    ) -> Problem:
        """The problem of an ``nn.Module`` at its current parameters, made functional with ``functional_call``.

        ``loss_module``: the torch loss whose mean reduction is the mean of ``loss`` (e.g. ``nn.CrossEntropyLoss()``
        for :func:`benchmark.numerics.losses.cross_entropy`); with it the problem keeps its :class:`Network`, which
        layer-wise estimators read through :meth:`network_at`."""

        def model(params: dict[str, Tensor], x: Tensor) -> Tensor:
            dtype = next(iter(params.values())).dtype
            # buffers (BatchNorm's running statistics) follow parameters given in another precision, as
            # losses_float64 gives them: functional_call would otherwise mix float64 parameters with float32 buffers
            cast = {
                name: buffer.to(dtype)
                for name, buffer in module.named_buffers()
                if buffer.is_floating_point() and buffer.dtype != dtype
            }
            return functional_call(module, {**cast, **params} if cast else params, (x,))

        params: dict[str, Tensor] = {name: p for name, p in module.named_parameters()}
        network = None if loss_module is None else Network(module, loss_module)
        return cls(model, loss, params, x_train, y_train, x_test, y_test, weight_decay, chunk_size, network=network)

    def __post_init__(self) -> None:
        self.params = {k: v.detach() for k, v in self.params.items()}
        self._shapes = [(k, v.shape) for k, v in self.params.items()]
        self.theta = self.flatten(self.params)
        self._gradient_graph: list[tuple[Tensor, Tensor]] | None = None
        self._graph_bytes: int | None = None

    # -- sizes and the flat parameter vector ---------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_params(self) -> int:
        return self.theta.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """The parameter dict as one vector ``theta`` (in the order of :attr:`params`)."""
        return torch.cat([params[k].reshape(-1) for k, _ in self._shapes])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Inverse of :meth:`flatten`."""
        # One split, not a slice per parameter: a slice's backward writes a zero-filled copy of all of theta per
        # parameter (6 s of a 6.4 s ResNet-18 gradient on this CPU); a split's backward concatenates once.
        pieces = torch.split(theta, [shape.numel() for _, shape in self._shapes])
        return {k: piece.view(shape) for (k, shape), piece in zip(self._shapes, pieces)}

    def model_params(self, theta: Tensor) -> dict[str, Tensor]:
        """Everything :attr:`model` takes at ``theta``: :meth:`unflatten` of it plus the :attr:`frozen` parameters."""
        return {**self.frozen, **self.unflatten(theta)} if self.frozen else self.unflatten(theta)

    # -- a subset of the parameters ------------------------------------------------------------------------------
    def layer_parameters(self, layers: str) -> list[str]:
        """The names of the parameters in ``layers`` (one of :data:`LAYERS`), in :attr:`params` order: ``all`` of
        them, or ``last``: those of the model's last module, the names that share the last name's prefix before its
        final dot (``2.weight`` and ``2.bias``)."""
        names = list(self.params)
        if layers not in LAYERS:
            raise ValueError(f"unknown layers {layers!r} (choices: {', '.join(LAYERS)})")
        if layers == "all":
            return names
        prefix = names[-1].rpartition(".")[0]
        return [name for name in names if name.rpartition(".")[0] == prefix]

    def columns(self, names: list[str]) -> Tensor:
        """The positions in ``theta`` of the parameters ``names`` (in :attr:`params` order), ``Tensor[k]``."""
        missing = sorted(set(names) - set(self.params))
        if not names:
            raise ValueError(f"no parameters selected (choices: {', '.join(self.params)})")
        if missing:
            raise ValueError(f"unknown parameters {', '.join(missing)} (choices: {', '.join(self.params)})")
        pieces, offset = [], 0
        for name, value in self.params.items():
            if name in names:
                pieces.append(torch.arange(offset, offset + value.numel(), device=self.device))
            offset += value.numel()
        return torch.cat(pieces)

    def restricted(self, names: list[str]) -> Problem:
        """The problem over the parameters ``names`` only, every other one :attr:`frozen` at the optimum.

        Its gradients, Hessian and generalised Gauss-Newton matrix are the ``names`` blocks of this problem's (the
        weight decay acts on its own parameters as before); its objective leaves out the frozen parameters' constant
        weight-decay term. A :attr:`curvature_cache` key gains the names, so a dense Hessian of the block is cached
        apart from the whole one. A subclass that overrides a derivative with its own code for every parameter falls
        back to this class's where :attr:`frozen` is not empty (as the Iris task's hand-written products do).
        """
        self.columns(names)  # unknown names fail here
        kept = {name: value for name, value in self.params.items() if name in names}
        frozen = {**self.frozen, **{name: value for name, value in self.params.items() if name not in names}}
        cache = self.curvature_cache
        if cache is not None:
            cache = (cache[0], {**cache[1], "parameters": list(kept)})
        return dataclasses.replace(self, params=kept, frozen=frozen, curvature_cache=cache)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Problem:
        """A copy with floating-point tensors cast (targets keep their integer dtype)."""

        def cast(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return dataclasses.replace(
            self,
            params={k: cast(v) for k, v in self.params.items()},
            frozen={k: cast(v) for k, v in self.frozen.items()},
            x_train=cast(self.x_train),
            y_train=cast(self.y_train),
            x_test=cast(self.x_test),
            y_test=cast(self.y_test),
        )

    def network_at(self, theta: Tensor | None = None) -> Network:
        """A copy of the problem's :class:`Network` whose module holds ``theta`` (default the optimum) as trainable
        parameters, in the problem's dtype and on its device; the problem's own module is left as it is.

        Raises:
            NotImplementedError: the task built the problem without its network (no ``loss_module``).
        """
        if self.network is None:
            raise NotImplementedError(
                "this problem has no nn.Module: its task builds it without Problem.from_module(..., loss_module=...)"
            )
        module = copy.deepcopy(self.network.module).to(device=self.device, dtype=self.dtype)
        values = self.model_params(self.theta if theta is None else theta)
        for name, parameter in module.named_parameters():
            parameter.data = values[name].detach().clone()
            parameter.requires_grad_(True)
        return Network(module, copy.deepcopy(self.network.loss))

    def trajectory(self, count: int, progress: bool = False) -> Trajectory:
        """``count`` evenly spaced checkpoints of the SGD run that trained this problem's optimum, with their learning
        rates and what producing them cost (:meth:`benchmark.numerics.trajectory.TrainingRun.checkpoints`; cached with
        the optimum).

        Raises:
            NotImplementedError: the problem has no :attr:`training_run` (its task does not train it through
                :meth:`benchmark.Task.trained`, e.g. pretrained weights).
        """
        if self.training_run is None:
            raise NotImplementedError(
                "this problem has no training run to take checkpoints from: its task does not train it through "
                "Task.trained (e.g. pretrained weights)"
            )
        return self.training_run.checkpoints(count, progress)

    def ensemble(self, count: int, subset_fraction: float = 1.0, progress: bool = False) -> Ensemble:
        """``count`` models trained as this problem's optimum was, each from its own initialisation and minibatch order
        (and, with ``subset_fraction`` below 1, on its own random share of the training set), with what training them
        cost (:meth:`benchmark.numerics.trajectory.TrainingRun.ensemble`; each member cached with the optimum, so a
        larger ensemble trains only the members it adds).

        Raises:
            NotImplementedError: the problem has no :attr:`training_run`, or its task states no initialisation for
                other seeds (:meth:`benchmark.Task.initial_parameters`).
        """
        if self.training_run is None:
            raise NotImplementedError(
                "this problem has no training run to train an ensemble like: its task does not train it through "
                "Task.trained (e.g. pretrained weights)"
            )
        return self.training_run.ensemble(count, subset_fraction, progress)

    # -- losses and objective ---------------------------------------------------------------------------------------
    def losses(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-example losses ``Tensor[N]`` of the model at ``theta`` on ``(x, y)``."""
        return self.loss(self.model(self.model_params(theta), x), y)

    def losses_float64(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-example losses ``Tensor[N]`` (float64) of the model at ``theta``, evaluated in float64: the parameters,
        frozen parameters and floating-point inputs cast up (a :meth:`from_module` model casts its buffers to match), so
        the rounding of the forward pass is far below any loss difference.

        Every ground truth measures test losses with it. A leave-one-out effect is a difference of two test losses,
        and on a float32 problem it can be as small as one float32 step of the loss (``2**-17`` at a loss of 78: the
        paper-size LeNet row); evaluated in the problem's precision it would be rounded to whole steps."""
        params = {name: value.to(torch.float64) for name, value in self.frozen.items()}
        params.update(self.unflatten(theta.to(torch.float64)))
        x = x.to(torch.float64) if x.is_floating_point() else x
        with torch.no_grad():
            return self.loss(self.model(params, x), y)

    def objective(self, theta: Tensor, indices: Tensor | None = None) -> Tensor:
        """The training objective ``J`` at ``theta``; over a minibatch of training ``indices`` if given."""
        x, y = (self.x_train, self.y_train) if indices is None else (self.x_train[indices], self.y_train[indices])
        return self.losses(theta, x, y).mean() + 0.5 * self.weight_decay * theta.dot(theta)

    def test_losses(self, theta: Tensor | None = None) -> Tensor:
        """Per-example test losses at ``theta`` (default: the optimum)."""
        with torch.no_grad():
            return self.losses(self.theta if theta is None else theta, self.x_test, self.y_test)

    def objective_and_gradient(self, theta: Tensor) -> tuple[float, Tensor]:
        """``J(theta)`` and ``grad J(theta)`` on the full training set, summed over passes that fit in memory (the
        task's :attr:`chunk_size`, in pieces of :attr:`PASS_BYTES` on the CPU); the losses are summed in float64, so
        that the value is exact enough for a line search near the optimum (``benchmark.numerics.training.polish``)."""
        rows = self.chunk_size or self.n_train
        if self.device.type == "cpu":
            rows = min(rows, self._pass_rows(self._graph_bytes_per_example()))
        total = torch.zeros((), dtype=torch.float64, device=theta.device)
        gradient = torch.zeros_like(theta)
        for part_rows in self.train_slices(rows):
            with torch.enable_grad():
                point = theta.detach().requires_grad_()
                loss = self.losses(point, self.x_train[part_rows], self.y_train[part_rows]).sum()
                (part,) = torch.autograd.grad(loss / self.n_train, point)
            gradient += part
            total += loss.detach().double()
        value = float(total) / self.n_train + 0.5 * self.weight_decay * float(theta.detach().double().square().sum())
        return value, gradient + self.weight_decay * theta.detach()

    def gradient_norm(self) -> float:
        """``||grad J(theta*)||``: zero at an exact optimum, so it measures how converged the training was."""
        return float(torch.linalg.vector_norm(grad(self.objective)(self.theta)))

    # -- gradients ---------------------------------------------------------------------------------------------------
    def _example_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.losses(theta, x.unsqueeze(0), y.unsqueeze(0))[0]

    def _example_gradients(self, x: Tensor, y: Tensor) -> Tensor:
        return vmap(grad(self._example_loss), in_dims=(None, 0, 0))(self.theta, x, y)

    def test_gradients(self, indices: Tensor | list[int]) -> Tensor:
        """Gradients of the per-example test losses (no regulariser), ``Tensor[m, P]``."""
        indices = torch.as_tensor(indices, device=self.x_test.device)
        return self._example_gradients(self.x_test[indices], self.y_test[indices])

    def train_gradients(self, indices: Tensor | list[int]) -> Tensor:
        """Gradients ``g_i`` of the per-example training losses (no regulariser), ``Tensor[m, P]``."""
        indices = torch.as_tensor(indices, device=self.x_train.device)
        return self._example_gradients(self.x_train[indices], self.y_train[indices])

    def train_slices(self, chunk_size: int | None = None) -> list[slice]:
        """The training set cut into consecutive chunks of at most ``chunk_size`` (default :attr:`chunk_size`)."""
        size = chunk_size or self.chunk_size or self.n_train
        return [slice(start, min(start + size, self.n_train)) for start in range(0, self.n_train, size)]

    def gradient_rows(self) -> int:
        """How many per-example gradients (``P`` numbers each) an estimator that streams them (``grad-cos``, ``tracin``,
        ``trak``) holds at once: at most :attr:`MAX_GRADIENT_ROWS` and :attr:`GRADIENT_BYTES` of them, at least one."""
        fitting = self.GRADIENT_BYTES // (self.n_params * self.theta.element_size())
        return max(1, min(self.MAX_GRADIENT_ROWS, fitting))

    def iter_train_gradients(self, chunk_size: int = 1024) -> Iterator[tuple[slice, Tensor]]:
        """All training gradients in chunks of at most ``chunk_size`` rows, so ``n x P`` is never held at once."""
        for rows in self.train_slices(chunk_size):
            yield rows, self._example_gradients(self.x_train[rows], self.y_train[rows])

    def train_gradient_products(self, vectors: Tensor, chunk_size: int | None = None) -> Tensor:
        """``G_train @ vectors.T``: the dot product of every training gradient with each row of ``vectors``.

        Where per-example gradients are small (:attr:`MIN_PASS_ROWS` of them and their graphs fit in
        :attr:`PASS_BYTES`), they are taken chunk by chunk (``vmap(grad)``) and multiplied with ``vectors``: of the
        ways measured on LeNet and the small CNN, faster than forward-mode passes (``leaderboards/speed-blocks.md``,
        the "training side" rows). Otherwise nothing of size ``P`` per
        example is formed: ``g_i^T v`` is the directional derivative of the ``i``-th loss along ``v``, so one
        forward-mode pass (``jvp`` of the per-example losses) per chunk and vector gives all ``n`` products at the
        cost of about two forward passes; the ``m`` passes over a chunk run side by side (``vmap``), so a chunk is
        ``chunk_size // m`` examples, in memory of ``chunk_size`` examples' activations.

        Args:
            vectors: ``Tensor[m, P]``.
            chunk_size: examples times vectors per pass (default :attr:`chunk_size`; neither: the whole set at once).

        Returns:
            ``Tensor[m, n]``.
        """
        out = vectors.new_empty(len(vectors), self.n_train)
        budget = chunk_size or self.chunk_size
        gradient_bytes = self.n_params * self.theta.element_size() + self._graph_bytes_per_example()
        if self.PASS_BYTES // gradient_bytes >= self.MIN_PASS_ROWS:
            for rows in self.train_slices(self._pass_rows(gradient_bytes, budget)):
                out[:, rows] = vectors @ self._example_gradients(self.x_train[rows], self.y_train[rows]).T
            return out
        for rows in self.train_slices(budget and max(1, budget // max(1, len(vectors)))):
            x, y = self.x_train[rows], self.y_train[rows]

            def chunk_losses(theta: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
                return self.losses(theta, x, y)

            out[:, rows] = vmap(lambda v: jvp(chunk_losses, (self.theta,), (v,))[1])(vectors)
        return out

    def _pass_rows(self, bytes_per_example: int, limit: int | None = None) -> int:
        """Examples per pass that hold at most :attr:`PASS_BYTES`, but at least :attr:`MIN_PASS_ROWS` and at most
        ``limit`` (the task's :attr:`chunk_size`, a memory bound) or the training set."""
        rows = max(self.MIN_PASS_ROWS, self.PASS_BYTES // max(1, bytes_per_example))
        return max(1, min(rows, limit or self.n_train, self.n_train))

    def _graph_bytes_per_example(self) -> int:
        """Bytes the gradient's graph (``create_graph``, as :meth:`hvp` keeps it) saves per training example:
        what two examples save less what one saves. Measured once, on the first training examples."""
        if self._graph_bytes is None:

            def saved(count: int) -> int:
                total = 0

                def pack(tensor: Tensor) -> Tensor:
                    nonlocal total
                    total += tensor.numel() * tensor.element_size()
                    return tensor

                hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
                with torch.enable_grad(), data_convolutions(), hooks:
                    theta = self.theta.detach().requires_grad_()
                    loss = self.losses(theta, self.x_train[:count], self.y_train[:count]).sum()
                    torch.autograd.grad(loss, theta, create_graph=True)
                return total

            one = saved(1)
            self._graph_bytes = max(1, saved(2) - one) if self.n_train > 1 else max(1, one)
        return self._graph_bytes

    def warm_up(self) -> None:
        """Pay torch's one-off costs (forward-mode AD compiles its decompositions on first use: seconds) on two
        examples, so that they are not timed as part of whichever estimator runs first."""
        x, y = self.x_train[:2], self.y_train[:2]
        jvp(lambda theta: self.losses(theta, x, y), (self.theta,), (self.theta,))
        self._hvp_on(self.theta[None], x, y)

    # -- curvature ---------------------------------------------------------------------------------------------------
    def hvp(self, vectors: Tensor, indices: Tensor | None = None) -> Tensor:
        """Hessian-vector products ``H v`` of the objective, one per row of ``vectors``.

        On the full training set in one chunk, the gradient's autograd graph is built once and kept, and each later
        product is one backward pass through it (reverse-over-reverse), which skips re-running the forward and first
        backward passes. Its convolutions of the data are
        :func:`~benchmark.numerics.data_convolution.data_convolutions`, whose second backward skips torch's unneeded
        gradient with respect to the images. On the CPU the graph is kept in pieces of :attr:`PASS_BYTES`, whose
        products are summed; together they hold what one graph would. On LeNet and the small CNN this is faster than the
        graph in one piece, than one piece through torch's own convolutions and than ``jvp`` of ``grad`` (measured per
        product: ``leaderboards/speed-blocks.md``, the "HVP, 1 vector" rows). Over several chunks (:attr:`chunk_size`)
        the products are summed chunk by chunk, forward-over-reverse, so memory stays at one chunk's activations (on the
        CPU, in passes of :attr:`PASS_BYTES` within a chunk); a minibatch (``indices``) takes the same path.

        Args:
            vectors: ``Tensor[m, P]``.
            indices: a minibatch of training indices for a stochastic Hessian; the full set if ``None``.

        Returns:
            ``Tensor[m, P]``.
        """
        if indices is not None:
            return self._hvp_on(vectors, self.x_train[indices], self.y_train[indices])
        slices = self.train_slices()
        if len(slices) > 1:
            total = self.weight_decay * vectors
            for rows in slices:
                part = self._hvp_on(vectors, self.x_train[rows], self.y_train[rows], weight_decay=0.0)
                total = total + part * ((rows.stop - rows.start) / self.n_train)
            return total
        if self._gradient_graph is None:
            pieces = slices
            if self.device.type == "cpu":  # CUDA's caching allocator reuses memory: one piece launches fewest kernels
                pieces = self.train_slices(self._pass_rows(self._graph_bytes_per_example()))
            self._gradient_graph = []
            with torch.enable_grad(), data_convolutions():
                for rows in pieces:
                    theta = self.theta.detach().requires_grad_()
                    loss = self.losses(theta, self.x_train[rows], self.y_train[rows]).sum() / self.n_train
                    self._gradient_graph.append((theta, torch.autograd.grad(loss, theta, create_graph=True)[0]))
        total = self.weight_decay * vectors
        with torch.enable_grad():
            for theta, gradient in self._gradient_graph:
                total = total + torch.stack(
                    [torch.autograd.grad(gradient, theta, v, retain_graph=True)[0] for v in vectors]
                )
        return total

    def _hvp_on(self, vectors: Tensor, x: Tensor, y: Tensor, weight_decay: float | None = None) -> Tensor:
        """``H v`` of the mean loss on ``(x, y)`` (plus ``weight_decay``, default the problem's), forward-over-reverse
        with the vectors side by side (``vmap``); on the CPU summed over passes of :attr:`PASS_BYTES` (taking the
        forward-over-reverse memory of an example along ``m`` vectors as ``m`` times what its gradient's graph
        saves)."""
        decay = self.weight_decay if weight_decay is None else weight_decay
        rows = len(x)
        if self.device.type == "cpu":
            rows = self._pass_rows(len(vectors) * self._graph_bytes_per_example())
        total = decay * vectors
        for start in range(0, len(x), rows):
            part_x, part_y = x[start : start + rows], y[start : start + rows]

            def part_loss(theta: Tensor, part_x: Tensor = part_x, part_y: Tensor = part_y) -> Tensor:
                return self.losses(theta, part_x, part_y).sum() / len(x)

            gradient = grad(part_loss)
            total = total + vmap(lambda v: jvp(gradient, (self.theta,), (v,))[1])(vectors)
        return total

    def ggnvp(self, vectors: Tensor, indices: Tensor | None = None) -> Tensor:
        """Generalised Gauss-Newton-vector products ``G v`` of the objective, one per row of ``vectors``.

        ``G = (1/n) sum_i J_i^T H_i J_i + weight_decay I``, where ``J_i`` is the Jacobian of the model's outputs on
        example ``i`` with respect to ``theta`` and ``H_i`` the Hessian of its loss with respect to those outputs
        (for :func:`~benchmark.numerics.losses.cross_entropy` ``diag(p) - p p^T`` of the softmax ``p``; for a squared
        error the identity times the loss's scale). ``G`` is the Hessian without the terms of the model's second
        derivatives, so it is positive semi-definite whenever the loss is convex in the outputs (both of those), and
        equal to the Hessian for a model linear in ``theta``.

        Nothing of size ``P`` per example is formed: per pass, ``J v`` is one forward-mode pass (``jvp``) with the
        vectors side by side (``vmap``), ``H_i`` acts on it by forward-over-reverse on the loss alone (outputs are
        small), and ``J^T`` is one reverse pass (``vjp``) per vector through the pass's kept forward graph. Passes
        follow :meth:`hvp`: the task's :attr:`chunk_size`, and on the CPU at most :attr:`PASS_BYTES` taking an
        example along ``m`` vectors as ``m`` times what its gradient's graph saves.

        Args:
            vectors: ``Tensor[m, P]``.
            indices: a minibatch of training indices (repeats count twice); the full set if ``None``.

        Returns:
            ``Tensor[m, P]``.
        """
        x, y = (self.x_train, self.y_train) if indices is None else (self.x_train[indices], self.y_train[indices])
        rows = self.chunk_size or len(x)
        if self.device.type == "cpu":
            rows = self._pass_rows(len(vectors) * self._graph_bytes_per_example(), rows)
        total = self.weight_decay * vectors
        for start in range(0, len(x), rows):
            part_x, part_y = x[start : start + rows], y[start : start + rows]

            def outputs_of(theta: Tensor, part_x: Tensor = part_x) -> Tensor:
                return self.model(self.model_params(theta), part_x)

            def summed_loss(outputs: Tensor, part_y: Tensor = part_y) -> Tensor:
                return self.loss(outputs, part_y).sum()

            forward = vjp(outputs_of, self.theta)  # (outputs, pullback); typed as if it could carry an aux output
            outputs, pullback = forward[0], forward[1]
            tangents = vmap(lambda v: jvp(outputs_of, (self.theta,), (v,))[1])(vectors)
            curved = vmap(lambda u: jvp(grad(summed_loss), (outputs,), (u,))[1])(tangents)
            total = total + vmap(pullback)(curved)[0] / len(x)
        return total

    def ggn(self, chunk_size: int = 64) -> Tensor:
        """The dense generalised Gauss-Newton matrix ``Tensor[P, P]`` (:meth:`ggnvp`) at the optimum, in the problem's
        dtype, from ``chunk_size`` basis vectors at a time."""
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        return torch.cat([self.ggnvp(eye[i : i + chunk_size]) for i in range(0, self.n_params, chunk_size)])

    def hessian(self, chunk_size: int = 64) -> Tensor:
        """The dense Hessian ``Tensor[P, P]`` of the objective at the optimum, in the problem's dtype.

        Built from Hessian-vector products with ``chunk_size`` basis vectors at a time, so memory stays at
        ``P^2`` plus one chunk of products.
        """
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        return torch.cat([self.hvp(eye[i : i + chunk_size]) for i in range(0, self.n_params, chunk_size)])
