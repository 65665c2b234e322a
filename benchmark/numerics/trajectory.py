"""The training run behind an optimum, replayed to hand out its checkpoints (what TracIn sums over) and run again from
other initialisations to train an ensemble (what TRAK averages over).

A task that trains its optimum through :meth:`benchmark.Task.trained` gets a :class:`TrainingRun` on its problem
(:attr:`benchmark.Problem.training_run`); estimators ask for checkpoints with :meth:`benchmark.Problem.trajectory` and
for an ensemble with :meth:`benchmark.Problem.ensemble`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from benchmark.common.cache import Cache
from benchmark.numerics import training
from benchmark.numerics.problem import Ensemble, Problem, Trajectory
from benchmark.numerics.recipes import Recipe

log = logging.getLogger("bench")


class TrainingRun:
    """How a problem's optimum was trained: the problem at its initialisation and the SGD phases (:class:`Recipe`) run
    from it, optionally with a cache and the key of the trained problem, under which checkpoints and ensemble members
    are kept.

    :meth:`checkpoints` replays the phases with :func:`benchmark.numerics.training.descend` (deterministic: the same
    minibatch order and momentum as the original run) and keeps the parameters at evenly spaced updates. A task that
    trains with its own trainer (:meth:`benchmark.Task.train_from`) gets the generic trainer's replay, the same run to
    rounding. Phases after SGD that are not gradient steps (an L-BFGS :class:`~benchmark.Polish`) have no learning rate
    and no checkpoints.

    :meth:`ensemble` runs the same phases from other initialisations: ``initialize(seed)`` gives the flat initial
    parameters the task draws for ``seed`` (:meth:`benchmark.Task.initial_parameters`; ``None`` where the task states
    none, and then there is no ensemble), ``seed`` is the optimum's own and ``optimum`` its trained parameters (set by
    :meth:`benchmark.Task.trained`; ``None`` trains member 0 too). Members are trained with ``descend``, the arguments
    and result of :func:`benchmark.numerics.training.descend` (a task's faster :meth:`benchmark.Task.descend`).
    """

    MEMBER_SEED_STRIDE = 10_000
    """Member ``j`` of an ensemble uses seed ``seed + j * MEMBER_SEED_STRIDE`` (for its initialisation, its minibatch
    order and its subset): far from the seeds the harness runs side by side (0, 1, 2, ...), whose optima would
    otherwise share an initialisation with a member."""

    def __init__(
        self,
        initial: Problem,
        phases: Sequence[Recipe],
        cache: Cache | None = None,
        key: dict[str, Any] | None = None,
        initialize: Callable[[int], Tensor] | None = None,
        seed: int = 0,
        optimum: Tensor | None = None,
        descend: Callable[..., Tensor] = training.descend,
    ):
        if not phases:
            raise ValueError("a training run needs at least one SGD phase")
        self.initial = initial
        self.phases = list(phases)
        self.cache = cache
        self.key = key
        self.initialize = initialize
        self.seed = seed
        self.optimum = optimum
        self.descend = descend

    def without_cache(self) -> TrainingRun:
        """The same run with no cache: :meth:`checkpoints` and :meth:`ensemble` train on every call."""
        run = copy.copy(self)
        run.cache, run.key = None, None
        return run

    def with_optimum(self, optimum: Tensor) -> TrainingRun:
        """The same run ending at ``optimum`` (the problem's parameters after every phase, a polish included), which a
        whole-set :meth:`ensemble` takes as its first member."""
        run = copy.copy(self)
        run.optimum = optimum
        return run

    @property
    def total_steps(self) -> int:
        """SGD updates over every phase."""
        return sum(phase.steps for phase in self.phases)

    def checkpoint_steps(self, count: int) -> list[int]:
        """``count`` evenly spaced updates ending with the last: ``round(k T / count)`` for ``k = 1..count``."""
        total = self.total_steps
        if not 1 <= count <= total:
            raise ValueError(f"checkpoints={count} must be between 1 and the run's {total} SGD steps")
        return [round(k * total / count) for k in range(1, count + 1)]

    def checkpoints(self, count: int, progress: bool = False) -> Trajectory:
        """The parameters after each of :meth:`checkpoint_steps` (``count``), from the cache where it holds them."""
        steps = self.checkpoint_steps(count)
        lrs = [self._phase_of(step).lr for step in steps]
        from_cache = True

        def replay() -> dict[str, Tensor]:
            nonlocal from_cache
            from_cache = False
            start = time.perf_counter()
            kept: dict[int, Tensor] = {}
            wanted = set(steps)
            current, done = self.initial, 0
            for phase in self.phases:

                def observe(step: int, thetas: Tensor, offset: int = done) -> None:
                    if step + offset in wanted:
                        kept[step + offset] = thetas[0].detach().clone()

                theta = training.descend(
                    current,
                    current.theta.unsqueeze(0),
                    torch.ones(1, current.n_train, dtype=current.dtype, device=current.device),
                    phase,
                    progress,
                    "replaying training for checkpoints",
                    observe,
                )[0]
                current, done = dataclasses.replace(current, params=current.unflatten(theta)), done + phase.steps
            thetas = torch.stack([kept[step] for step in steps])
            seconds = time.perf_counter() - start
            log.info("trajectory: %d checkpoints of %d SGD steps replayed in %.1f s", count, done, seconds)
            return {"thetas": thetas, "seconds": torch.tensor(seconds, dtype=torch.float64)}

        if self.cache is None or self.key is None:
            found = replay()
        else:
            found = self.cache.tensors("trajectories", {**self.key, "checkpoints": steps}, replay)
        return Trajectory(steps, lrs, found["thetas"], float(found["seconds"]), from_cache)

    def ensemble(self, count: int, subset_fraction: float = 1.0, progress: bool = False) -> Ensemble:
        """``count`` models trained with this run's SGD phases, member ``j`` from ``initialize(seed_j)`` with minibatch
        seeds offset by the same amount (``seed_j = seed + j *`` :attr:`MEMBER_SEED_STRIDE`).

        With ``subset_fraction`` 1, member 0 is the trained optimum itself (a model trained on the whole set, as the
        others are; where the task polished it after SGD, it is the only polished member) and the others are trained
        on the whole set. Below 1, every member is trained, each on ``round(subset_fraction * n)`` training points
        drawn with its seed, their losses weighted ``1 / subset_fraction`` so that each minibatch's objective stays an
        unbiased estimate of the subset's mean loss (the subsets of TRAK's paper, ``alpha = 0.5``).

        Members are cached one by one (under the optimum's key, the member's seed and the fraction), so a larger
        ensemble trains only the members a smaller one did not have.
        """
        if count < 1:
            raise ValueError(f"an ensemble needs at least one model, not {count}")
        if not 0.0 < subset_fraction <= 1.0:
            raise ValueError(f"subset_fraction={subset_fraction} must be in (0, 1]")
        if self.initialize is None:
            raise NotImplementedError(
                "the task states no initialisation for other seeds (Task.initial_parameters), so no ensemble can be "
                "trained like its optimum"
            )
        seeds = [self.seed + j * self.MEMBER_SEED_STRIDE for j in range(count)]
        thetas, seconds, seconds_now, loaded = [], 0.0, 0.0, 0
        for j, seed in enumerate(seeds):
            if j == 0 and subset_fraction == 1.0 and self.optimum is not None:
                thetas.append(self.optimum.to(self.initial.theta))
                loaded += 1
                continue
            cached = True

            def train(seed: int = seed) -> dict[str, Tensor]:
                nonlocal cached
                cached = False
                return self._train_member(seed, subset_fraction, progress)

            if self.cache is None or self.key is None:
                found = train()
            else:
                member_key = {**self.key, "member_seed": seed, "subset_fraction": subset_fraction}
                found = self.cache.tensors("ensembles", member_key, train)
            thetas.append(found["theta"].to(self.initial.theta))
            seconds += float(found["seconds"])
            seconds_now += 0.0 if cached else float(found["seconds"])
            loaded += int(cached)
        return Ensemble(seeds, subset_fraction, torch.stack(thetas), seconds, loaded, seconds_now)

    def _train_member(self, seed: int, subset_fraction: float, progress: bool) -> dict[str, Tensor]:
        initial = self.initial
        start = time.perf_counter()
        weights = torch.ones(1, initial.n_train, dtype=initial.dtype, device=initial.device)
        if subset_fraction < 1.0:
            generator = torch.Generator().manual_seed(seed)
            kept = torch.randperm(initial.n_train, generator=generator)[: round(subset_fraction * initial.n_train)]
            weights.zero_()
            weights[0, kept.to(initial.device)] = 1.0 / subset_fraction
        theta = self.train_from_scratch(weights, seed, progress, f"training ensemble member (seed {seed})")
        seconds = time.perf_counter() - start
        log.info("ensemble: member of seed %d trained in %.1f s", seed, seconds)
        return {"theta": theta[0], "seconds": torch.tensor(seconds, dtype=torch.float64)}

    def train_from_scratch(
        self, weights: Tensor, seed: int, progress: bool = False, description: str = "training from scratch"
    ) -> Tensor:
        """One model per row of ``weights`` (``Tensor[K, n_train]``, each training point's weight in that model's
        objective, 0 leaving it out), all trained from ``initialize(seed)`` with this run's SGD phases, their
        minibatch seeds offset by ``seed - self.seed``: stacked, through :attr:`descend`. Returns ``Tensor[K, P]``.

        The rows share the initialisation and the minibatch order, so they differ only by their data: what an
        ensemble member (one row) and the subset models of the linear datamodeling score (many rows) are.
        """
        if self.initialize is None:
            raise NotImplementedError(
                "the task states no initialisation for other seeds (Task.initial_parameters), so no model can be "
                "trained from scratch like its optimum"
            )
        initial = self.initial
        theta = self.initialize(seed).to(initial.theta).unsqueeze(0).expand(len(weights), -1)
        offset = seed - self.seed
        for phase in self.phases:
            theta = self.descend(
                initial, theta, weights, dataclasses.replace(phase, seed=phase.seed + offset), progress, description
            )
        return theta

    def _phase_of(self, step: int) -> Recipe:
        done = 0
        for phase in self.phases:
            done += phase.steps
            if step <= done:
                return phase
        raise ValueError(f"step {step} is past the run's {done} SGD steps")
