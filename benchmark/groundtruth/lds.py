"""Linear datamodeling ground truth: models trained from scratch on random subsets, the outputs of many test points.

Protocol (Park et al., TRAK, ICML 2023; as dattri and quanda compute it): draw ``M`` random subsets ``S_m`` holding
a fraction ``alpha`` of the training set, train one model on each **from scratch** with the task's own training
recipe (:class:`~benchmark.numerics.trajectory.TrainingRun`), and record the test loss of every evaluated test point
under each model. The linear datamodeling score (:func:`benchmark.evaluation.scoring.datamodeling_score`) then
compares, per test point, those losses with an estimator's additive prediction for each subset.

Design choices, stated because they change what the numbers mean:

- Subset ``m`` depends only on the training-set size, ``alpha``, the design's ``seed`` and ``m``, so 100 subsets are
  the first 100 of 200, and every estimator, test point and run of a task shares them.
- A subset model minimises the **mean** loss over its subset plus the weight decay (each kept point weighted
  ``n / |S|`` in the harness's ``1/n``-normalised objective): the model one would train on that subset as a data set
  of its own, as dattri and TRAK do.
- Training seed ``r`` (``R >= 2`` of them give the noise ceiling, as for leave-one-out) fixes one initialisation and
  one minibatch order for all subsets of that seed, so the models of one seed differ by their data only (common
  random numbers; the ``M`` subsets of a seed train stacked under ``torch.func.vmap``). Seed ``r``'s models start
  from ``Task.initial_parameters(seed + SEED_OFFSET + r * MEMBER_SEED_STRIDE)``, far from the optimum's seeds and
  from TRAK's ensemble members.
- A cache entry is one model's parameters, not its outputs, so any test point can be scored later without
  re-training. Entries are written atomically, claimed with an OS file lock (processes sharing the cache never train
  the same model twice, and a killed process's models are taken over) and verified when read.
- For a cross-entropy loss, the test loss is a strictly decreasing function of the margin ``log p / (1 - p)``
  (``loss = log(1 + exp(-margin))``), so the rank correlation over subsets is the same for both outputs up to its
  sign: the score is computed once, on the loss, in this harness's sign convention.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.common.cache import Cache, digest
from benchmark.groundtruth.engine import GroundTruthStats, compute_claimed, fastest_chunk_size
from benchmark.numerics.problem import Problem
from benchmark.numerics.trajectory import TrainingRun

log = logging.getLogger("bench")

LDS_VERSION = 1
"""Version of the subset-training code: bump it whenever a change alters what a subset model is."""

SEED_OFFSET = 1_000_000
"""Subset models of training seed ``r`` start from the initialisation of seed ``seed + SEED_OFFSET + r *``
:attr:`~benchmark.numerics.trajectory.TrainingRun.MEMBER_SEED_STRIDE`."""

KIND = "lds"
"""The cache directory (and ground-truth kind) of subset models."""


def scratch_run(problem: Problem, what: str) -> TrainingRun:
    """The training run that ``what`` trains models from scratch with; :class:`NotImplementedError` naming ``what`` if
    the task states none, or no initialisation for other seeds."""
    run = problem.training_run
    if not isinstance(run, TrainingRun) or run.initialize is None:
        raise NotImplementedError(
            f"{what} trains models from scratch, and this task states no training run with an initialisation for other "
            "seeds (Task.initial_parameters)"
        )
    return run


@dataclasses.dataclass(frozen=True)
class SubsetDesign:
    """Which subsets are trained: ``subsets`` of them, each a random ``fraction`` of the training set drawn with
    ``seed``. Defaults: 100 subsets of half the data (dattri's and quanda's)."""

    subsets: int = 100
    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subsets < 3:
            raise ValueError(f"lds subsets={self.subsets}: a rank correlation over subsets needs at least 3")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"lds fraction={self.fraction} must be strictly between 0 and 1")

    def kept(self, n_train: int, subset: int) -> Tensor:
        """The sorted training indices subset number ``subset`` keeps (``round(fraction * n_train)`` of them)."""
        size = round(self.fraction * n_train)
        if not 0 < size < n_train:
            raise ValueError(f"lds fraction={self.fraction} keeps {size} of {n_train} training points: none or all")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + subset)
        return torch.randperm(n_train, generator=generator)[:size].sort().values

    def masks(self, n_train: int) -> Tensor:
        """``Tensor[subsets, n_train]`` of booleans: which training points each subset keeps."""
        masks = torch.zeros(self.subsets, n_train, dtype=torch.bool)
        for m in range(self.subsets):
            masks[m, self.kept(n_train, m)] = True
        return masks


class SubsetGroundTruth:
    """The subset models of one training seed, for one trained problem (its training run says how to train).

    Args:
        problem: the problem at its optimum; its :attr:`~benchmark.Problem.training_run` must have an
            initialisation (:meth:`benchmark.Task.initial_parameters`), else :class:`NotImplementedError`.
        design: the subsets.
        cache: where the models live.
        key: everything that determines the problem (:meth:`benchmark.Task.problem_key`).
        train_seed: ``r``, the training seed (initialisation and minibatch order) shared by this object's models.
        chunk_size: how many models to train at once; ``None`` picks it by timing.
        progress: show progress bars.
    """

    def __init__(
        self,
        problem: Problem,
        design: SubsetDesign,
        cache: Cache,
        key: dict[str, Any],
        train_seed: int = 0,
        chunk_size: int | None = None,
        progress: bool = False,
    ):
        run = scratch_run(problem, "the linear datamodeling score")
        self.problem, self.design, self.cache, self.train_seed = problem, design, cache, int(train_seed)
        self.run = run
        self.chunk_size = None if chunk_size is None else max(1, int(chunk_size))
        self.progress = progress
        self.model_seed = run.seed + SEED_OFFSET + self.train_seed * TrainingRun.MEMBER_SEED_STRIDE
        self.key = {
            **key,
            "lds_version": LDS_VERSION,
            "fraction": design.fraction,
            "design_seed": design.seed,
            "train_seed": self.train_seed,
            "phases": [dataclasses.asdict(phase) for phase in run.phases],
            "dtype": str(problem.dtype),
        }
        self.stats = GroundTruthStats()
        self._masks: Tensor | None = None
        self._corrupt: set[int] = set()

    # -- public ------------------------------------------------------------------------------------------------------
    @property
    def masks(self) -> Tensor:
        """Which training points each subset keeps (``Tensor[subsets, n_train]``, booleans)."""
        if self._masks is None:
            self._masks = self.design.masks(self.problem.n_train)
        return self._masks

    def entry_key(self, subset: int) -> dict[str, Any]:
        """The cache key of subset ``subset``'s model."""
        return {**self.key, "subset": int(subset)}

    def missing(self) -> list[int]:
        """The subsets without a valid cached model."""
        return [m for m in range(self.design.subsets) if self._load(m) is None]

    def test_losses(
        self, test_indices: Sequence[int], executor: Callable[[SubsetGroundTruth, list[int]], int] | None = None
    ) -> Tensor:
        """``Tensor[subsets, T]`` (float64): the test loss of each of ``test_indices`` under each subset's model;
        only the models the cache lacks are trained (by ``executor`` where given: ``executor(self, missing) ->
        number trained``, e.g. :mod:`benchmark.groundtruth.executors`; else in this process)."""
        start = time.perf_counter()
        models = {m: self._load(m) for m in range(self.design.subsets)}  # each model read and verified once
        missing = [m for m, theta in models.items() if theta is None]
        self.stats.cached += self.design.subsets - len(missing)
        if missing:
            if executor is None:
                with tqdm(
                    total=self.design.subsets,
                    initial=self.design.subsets - len(missing),
                    desc=f"subset models (seed {self.train_seed})",
                    unit="model",
                    disable=not self.progress,
                    mininterval=0.5,
                ) as bar:
                    computed = self.compute(missing, on_chunk=bar.update)
            else:
                computed = executor(self, missing)
            self.stats.computed += computed
            self.stats.cached += len(missing) - computed
        problem = self.problem
        index = torch.as_tensor(list(test_indices), dtype=torch.long, device=problem.x_test.device)
        x, y = problem.x_test[index], problem.y_test[index]
        losses = []
        for m in range(self.design.subsets):
            theta = models[m] if models[m] is not None else self._load(m)
            if theta is None:
                raise RuntimeError(f"subset model {m} is missing after training it ({self.cache.root / KIND})")
            losses.append(problem.losses_float64(theta.to(problem.theta), x, y).cpu())
        self.stats.seconds += time.perf_counter() - start
        return torch.stack(losses)

    def compute(self, subsets: Sequence[int], on_chunk: Callable[[int], None] | None = None) -> int:
        """Train and store the models of ``subsets`` that no one else has, a chunk at a time, each claimed with a file
        lock first (:func:`~benchmark.groundtruth.engine.compute_claimed`); returns how many it trained."""
        return compute_claimed(
            subsets,
            lambda m: self.cache.tensor_lock(KIND, self.entry_key(m)),
            lambda m: self._load(m) is None,
            lambda chunk: self._train_chunks(chunk, on_chunk),
            self._chunk_size,
            on_chunk,
        )

    def _chunk_size(self, n_models: int) -> int:
        if self.chunk_size is None:
            self.chunk_size = fastest_chunk_size(
                self.problem, self.run.phases[0], n_models, self.run.descend, "subset-model"
            )
        return self.chunk_size

    # -- training ----------------------------------------------------------------------------------------------------
    def weights(self, subsets: Sequence[int]) -> Tensor:
        """``Tensor[len(subsets), n_train]``: each kept point weighted ``n / |S|`` (the subset's mean loss), the
        others 0."""
        problem = self.problem
        masks = self.masks[list(subsets)].to(problem.device)
        return masks.to(problem.dtype) * (problem.n_train / masks.sum(dim=1, keepdim=True).to(problem.dtype))

    def _train_chunks(self, subsets: list[int], on_chunk: Callable[[int], None] | None) -> int:
        if not subsets:
            return 0
        size = self.stats.chunk_size = self._chunk_size(len(subsets))
        for begin in range(0, len(subsets), size):
            chunk = subsets[begin : begin + size]
            start = time.perf_counter()
            thetas = self.run.train_from_scratch(
                self.weights(chunk), self.model_seed, self.progress, f"training {len(chunk)} subset models"
            )
            seconds = (time.perf_counter() - start) / len(chunk)
            for m, theta in zip(chunk, thetas):
                state = {"theta": theta.detach().clone(), "seconds": torch.tensor(seconds, dtype=torch.float64)}
                self.cache.store_tensors(KIND, self.entry_key(m), state)
            if on_chunk is not None:
                on_chunk(len(chunk))
        log.info("trained %d subset models (seed %d)", len(subsets), self.train_seed)
        return len(subsets)

    def _load(self, subset: int) -> Tensor | None:
        """Subset ``subset``'s model; ``None`` if absent or corrupt (damaged, failing its checksum, or not the
        tensors a subset model has: counted in :attr:`stats` and trained again)."""
        key = self.entry_key(subset)
        found = self.cache.load_tensors(KIND, key)
        theta = None if found is None else found.get("theta")
        if found is not None and (
            found.keys() != {"theta", "seconds"} or theta is None or theta.shape != self.problem.theta.shape
        ):
            log.warning("corrupt subset model %d (unexpected contents): training it again", subset)
            theta = None
        if theta is None and (self.cache.root / KIND / digest(key)).with_suffix(".json").exists():
            self._corrupt.add(subset)
            self.stats.corrupt = len(self._corrupt)
        return theta
