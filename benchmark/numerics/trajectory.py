"""The training run behind an optimum, replayed to hand out its checkpoints (what TracIn sums over).

A task that trains its optimum through :meth:`benchmark.Task.trained` gets a :class:`TrainingRun` on its problem
(:attr:`benchmark.Problem.training_run`); estimators ask for checkpoints with :meth:`benchmark.Problem.trajectory`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from benchmark.common.cache import Cache
from benchmark.numerics import training
from benchmark.numerics.problem import Problem, Trajectory
from benchmark.numerics.recipes import Recipe

log = logging.getLogger("bench")


class TrainingRun:
    """How a problem's optimum was trained: the problem at its initialisation and the SGD phases (:class:`Recipe`) run
    from it, optionally with a cache and the key of the trained problem, under which checkpoints are kept.

    :meth:`checkpoints` replays the phases with :func:`benchmark.numerics.training.descend` (deterministic: the same
    minibatch order and momentum as the original run) and keeps the parameters at evenly spaced updates. A task that
    trains with its own trainer (:meth:`benchmark.Task.train_from`) gets the generic trainer's replay, the same run to
    rounding. Phases after SGD that are not gradient steps (an L-BFGS :class:`~benchmark.Polish`) have no learning rate
    and no checkpoints.
    """

    def __init__(
        self, initial: Problem, phases: Sequence[Recipe], cache: Cache | None = None, key: dict[str, Any] | None = None
    ):
        if not phases:
            raise ValueError("a training run needs at least one SGD phase")
        self.initial = initial
        self.phases = list(phases)
        self.cache = cache
        self.key = key

    def without_cache(self) -> TrainingRun:
        """The same run with no cache: :meth:`checkpoints` replays it on every call."""
        return TrainingRun(self.initial, self.phases)

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

    def _phase_of(self, step: int) -> Recipe:
        done = 0
        for phase in self.phases:
            done += phase.steps
            if step <= done:
                return phase
        raise ValueError(f"step {step} is past the run's {done} SGD steps")
