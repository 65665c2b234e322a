"""Leave-one-out from scratch: the question re-training from the optimum only approximates.

Removing point ``m`` and training a new model **from scratch** with the task's own recipe is what "the influence of
``m``" means to most users; the paper's protocol (:mod:`benchmark.groundtruth.engine`) warm-starts at ``theta*``
instead, and a damped influence function answers a third question (:mod:`benchmark.groundtruth.pbrf`). Bae et al.
(NeurIPS 2022) attribute the gap between the first and the others to warm-starting, the proximity term and
non-convergence; this ground truth is the first term of that decomposition.

For training seed ``r`` (``--gt-seeds``), every model starts from the same initialisation, the one the linear
datamodeling score's subset models of seed ``r`` use (``Task.initial_parameters(seed + SEED_OFFSET + r * stride)``,
:mod:`benchmark.groundtruth.lds`), and follows the same SGD phases and minibatch order as the optimum's training (no
L-BFGS polish), on the objective with point ``m`` re-weighted to 0 and the ``1/n`` normalisation kept (the
leave-one-out definition, ``docs/ground-truth.md``). Its reference is the model trained the same way on all points,
so the effect ``loss_test(theta_-m) - loss_test(theta_ref)`` is a difference of two runs that share every random
choice (common random numbers); the seeds then average over initialisations. The reference's distance from
``theta*`` is recorded as its drift (``loss_test(theta_ref) - loss_test(theta*)``).

Entries, locks, resumption, corruption checks and executors are those of leave-one-out (a
:class:`~benchmark.groundtruth.engine.GroundTruth` whose re-training step trains from scratch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from benchmark.common.cache import Cache
from benchmark.groundtruth.engine import GroundTruth, evaluation_key, fastest_chunk_size
from benchmark.groundtruth.lds import SEED_OFFSET, scratch_run
from benchmark.numerics.problem import Problem
from benchmark.numerics.recipes import Recipe
from benchmark.numerics.trajectory import TrainingRun

SCRATCH_VERSION = 1
"""Version of the from-scratch re-training code: part of every cache key."""


class ScratchGroundTruth(GroundTruth):
    """Leave-one-out effects on one test point with every model trained from scratch (the module docstring).

    Args:
        problem: the problem at its optimum, with its :class:`~benchmark.numerics.trajectory.TrainingRun` and an
            initialisation for other seeds, else :class:`NotImplementedError`.
        cache, key, test_index, chunk_size, progress: as :class:`~benchmark.groundtruth.engine.GroundTruth`.
        train_seed: ``r``, the training seed shared by this object's models.
    """

    kind = "loo-scratch"
    title = "leave-one-out from scratch"

    def __init__(
        self,
        problem: Problem,
        cache: Cache,
        key: dict[str, Any],
        test_index: int,
        train_seed: int = 0,
        chunk_size: int | None = None,
        progress: bool = False,
    ):
        run = scratch_run(problem, "leave-one-out from scratch")
        self.run, self.train_seed = run, int(train_seed)
        self.model_seed = run.seed + SEED_OFFSET + self.train_seed * TrainingRun.MEMBER_SEED_STRIDE
        # no SGD recipe from the optimum: the placeholder keeps the shared machinery's fields
        super().__init__(problem, Recipe(steps=0, lr=0.0), cache, key, test_index, chunk_size, progress)

    def method_key(self) -> dict[str, Any]:
        return {
            "scratch_version": SCRATCH_VERSION,
            "train_seed": self.train_seed,
            "phases": [dataclasses.asdict(phase) for phase in self.run.phases],
            "dtype": str(self.problem.dtype),
            **evaluation_key(self.problem),
        }

    def choose_chunk_size(self, n_models: int) -> int:
        if self.chunk_size is None:
            self.chunk_size = fastest_chunk_size(
                self.problem, self.run.phases[0], n_models, self.run.descend, "leave-one-out from scratch"
            )
        return self.chunk_size

    def retrain(self, weights: Tensor, description: str) -> Tensor:
        """Train one model per row of ``weights`` from scratch (seed :attr:`model_seed`), stacked."""
        return self.run.train_from_scratch(weights, self.model_seed, self.progress, description)
