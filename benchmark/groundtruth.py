"""Leave-one-out ground truth: re-train from the optimum without each training point, measure the test loss.

Protocol (the paper's): start at ``theta*``, re-train ``recipe.steps`` updates with point ``i`` removed, and measure
the test loss. The truth is its change against a *reference* re-trained for the same steps, with the same minibatch
sequence, on the full data, so that the optimiser's own drift is not counted as influence::

    loss_change_i = loss_test(theta_-i) - loss_test(theta_ref)

Each removed point is one cache entry, written atomically as soon as its chunk of models finishes: an interrupted run
loses only the chunk in flight, a rerun computes only what is missing, and every estimator shares the entries.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.cache import Cache, digest
from benchmark.problem import Problem
from benchmark.task import Recipe
from benchmark.training import descend

log = logging.getLogger("bench")

RECIPE_VERSION = 1
"""Version of the re-training code: bump it whenever a change alters what the re-training computes."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """The model re-trained on the full data: the baseline of every leave-one-out effect."""

    test_loss: float
    optimum_test_loss: float
    theta: Tensor

    @property
    def drift(self) -> float:
        """Change of the test loss by re-training alone (no point removed): zero at a perfectly converged optimum."""
        return self.test_loss - self.optimum_test_loss


@dataclasses.dataclass(frozen=True)
class LooEffect:
    """The measured effect of removing one training point."""

    removed: int
    loss_change: float
    test_loss: float
    param_change_norm: float


@dataclasses.dataclass
class GroundTruthStats:
    """How much of a request came from the cache."""

    cached: int = 0
    computed: int = 0
    corrupt: int = 0
    seconds: float = 0.0


class GroundTruth:
    """Leave-one-out effects on one test point, for one trained problem and re-training recipe.

    Args:
        problem: the problem at its optimum.
        recipe: the re-training recipe.
        cache: where entries live.
        key: everything else that determines the problem (task, version, config, seed); the test point, the recipe
            and :data:`RECIPE_VERSION` are added here.
        test_index: the test point whose loss is measured.
        chunk_size: how many models to re-train at once.
        progress: show a progress bar.
    """

    def __init__(
        self,
        problem: Problem,
        recipe: Recipe,
        cache: Cache,
        key: dict[str, Any],
        test_index: int,
        chunk_size: int = 128,
        progress: bool = False,
    ):
        self.problem, self.recipe, self.cache = problem, recipe, cache
        self.test_index = int(test_index)
        self.chunk_size = max(1, int(chunk_size))
        self.progress = progress
        self.key = {
            **key,
            "test_index": self.test_index,
            "recipe": dataclasses.asdict(recipe),
            "recipe_version": RECIPE_VERSION,
            "dtype": str(problem.dtype),
        }
        self.directory = cache.root / "loo" / digest(self.key)
        self.stats = GroundTruthStats()

    # -- public ------------------------------------------------------------------------------------------------------
    def reference(self) -> Reference:
        """The full-data reference, from the cache or re-trained now."""

        def retrain() -> dict[str, Tensor]:
            weights = torch.ones(1, self.problem.n_train, dtype=self.problem.dtype, device=self.problem.device)
            return {"theta": self._retrain(weights, "re-training reference")[0]}

        theta = self.cache.tensors("loo-reference", self._entry_key("reference"), retrain)["theta"]
        theta = theta.to(device=self.problem.device, dtype=self.problem.dtype)
        losses = self._test_losses(torch.stack([theta, self.problem.theta]))
        return Reference(float(losses[0]), float(losses[1]), theta)

    def effects(self, removed: Sequence[int]) -> dict[int, LooEffect]:
        """Leave-one-out effects of removing each point in ``removed`` (cached ones are loaded, not recomputed)."""
        start = time.perf_counter()
        reference = self.reference()
        found: dict[int, LooEffect] = {}
        missing: list[int] = []
        for i in sorted({int(i) for i in removed}):
            effect = self._load(i)
            if effect is None:
                missing.append(i)
            else:
                found[i] = effect
        self.stats.cached += len(found)
        bar = tqdm(total=len(missing), desc="leave-one-out", unit="model", disable=not self.progress or not missing)
        for begin in range(0, len(missing), self.chunk_size):
            chunk = missing[begin : begin + self.chunk_size]
            weights = torch.ones(len(chunk), self.problem.n_train, dtype=self.problem.dtype, device=self.problem.device)
            weights[torch.arange(len(chunk)), torch.tensor(chunk)] = 0.0
            thetas = self._retrain(weights, f"re-training {len(chunk)} models")
            losses = self._test_losses(thetas)
            norms = torch.linalg.vector_norm(thetas - reference.theta.to(thetas), dim=1)
            for i, loss, norm in zip(chunk, losses.tolist(), norms.tolist()):
                found[i] = LooEffect(i, loss - reference.test_loss, loss, norm)
                self._store(found[i])
            self.stats.computed += len(chunk)
            bar.update(len(chunk))
        bar.close()
        self.stats.seconds += time.perf_counter() - start
        return {i: found[i] for i in removed}

    # -- re-training -------------------------------------------------------------------------------------------------
    def _retrain(self, weights: Tensor, description: str) -> Tensor:
        start = self.problem.theta.unsqueeze(0).expand(len(weights), -1)
        return descend(self.problem, start, weights, self.recipe, self.progress, description)

    def _test_losses(self, thetas: Tensor) -> Tensor:
        x = self.problem.x_test[self.test_index : self.test_index + 1]
        y = self.problem.y_test[self.test_index : self.test_index + 1]
        with torch.no_grad():
            return torch.stack([self.problem.losses(theta, x, y)[0] for theta in thetas])

    # -- cache entries -----------------------------------------------------------------------------------------------
    def _entry_key(self, removed: int | str) -> dict[str, Any]:
        return {**self.key, "removed": removed}

    def _load(self, i: int) -> LooEffect | None:
        payload = self.cache.read_json(self.directory / f"{i}.json", self._entry_key(i))
        if payload is None:
            if (self.directory / f"{i}.json").exists():
                self.stats.corrupt += 1
            return None
        return LooEffect(removed=i, **payload)

    def _store(self, effect: LooEffect) -> None:
        payload = dataclasses.asdict(effect)
        del payload["removed"]
        self.cache.write_json(self.directory / f"{effect.removed}.json", self._entry_key(effect.removed), payload)
