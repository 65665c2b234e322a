"""Leave-one-out ground truth: re-train from the optimum without each training point, measure the test loss.

Protocol (the paper's): start at ``theta*``, re-train ``recipe.steps`` updates with point ``i`` removed, and measure
the test loss. The truth is its change against a *reference* re-trained for the same steps, with the same minibatch
sequence, on the full data, so that the optimiser's own drift is not counted as influence::

    loss_change_i = loss_test(theta_-i) - loss_test(theta_ref)

Test losses are evaluated in float64 whatever the problem's precision (:meth:`Problem.losses_float64`): an effect can
be smaller than one float32 step of the test loss.

where ``theta_-i`` minimises the training objective with point ``i`` re-weighted to 0 and the ``1/n`` normalisation
kept, ``(1/n) sum_{j != i} l_j + (weight_decay / 2) ||theta||^2``: the objective whose minimiser the influence
function linearises (:mod:`benchmark.numerics.training`).

Each removed point is one cache entry, written atomically as soon as its chunk of models finishes: an interrupted run
loses only the chunk in flight, a rerun computes only what is missing, and every estimator shares the entries. Each
entry is claimed with an OS file lock before it is computed, so processes sharing a cache directory never compute
the same entry twice; a killed process's locks are released by the OS, so its entries are taken over, not lost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.common.cache import Cache, digest
from benchmark.common.errors import CacheError
from benchmark.numerics.problem import Problem
from benchmark.numerics.recipes import Recipe
from benchmark.numerics.training import descend

log = logging.getLogger("bench")

RECIPE_VERSION = 2
"""Version of the re-training code: bump it whenever a change alters what the re-training computes.

2: a removed point is re-weighted to 0 with the ``1/n`` normalisation kept (:mod:`benchmark.numerics.training`); version
1 divided by the ``n - 1`` remaining points, which adds a common shift to every leave-one-out model."""


def evaluation_key(problem: Problem) -> dict[str, str]:
    """The cache-key field of the test losses' precision, for a ground truth's :meth:`GroundTruth.method_key`.

    Test losses have been evaluated in float64 (:meth:`Problem.losses_float64`) since this field was added; before,
    in the problem's precision. That changed only the entries of problems not already in float64, so only theirs get
    the field (a float64 problem's entries keep their key and stay valid)."""
    return {} if problem.dtype == torch.float64 else {"test_loss_dtype": "float64"}


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
    """How much of a request came from the cache (``cached`` includes entries other processes computed meanwhile)."""

    cached: int = 0
    computed: int = 0
    corrupt: int = 0
    seconds: float = 0.0
    chunk_size: int | None = None


MEMORY_FRACTION = 0.25
"""Share of the free memory (host, or GPU on CUDA) that one chunk of stacked models may plan to use."""


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: ``cudaMemGetInfo`` on CUDA, ``MemAvailable`` of ``/proc/meminfo`` on the host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def memory_per_model(problem: Problem, batch_size: int | None) -> int:
    """A planning estimate of the bytes one stacked model needs: parameters, gradient, momentum and a copy, plus its
    activations (the output size per example times the minibatch, times 8 for the hidden layers and their grads)."""
    itemsize = problem.theta.element_size()
    batch = batch_size or problem.n_train
    with torch.no_grad():
        outputs = problem.model(problem.params, problem.x_train[:1]).numel()
    return itemsize * (4 * problem.n_params + 8 * outputs * batch + problem.x_train[:1].numel() * batch)


def fastest_chunk_size(
    problem: Problem,
    recipe: Recipe,
    n_models: int,
    train: Callable[..., Tensor] = descend,
    what: str = "leave-one-out",
) -> int:
    """How many of ``n_models`` models to train at once with ``train`` (:func:`benchmark.numerics.training.descend`'s
    arguments, or a task's faster equivalent): the fastest per model among powers of two that fit in memory, timed
    on a few steps of ``recipe`` (stacking never pays less than one at a time, since 1 is a candidate)."""
    per_model = memory_per_model(problem, recipe.batch_size)
    cap = max(1, min(n_models, int(MEMORY_FRACTION * free_memory(problem.device)) // per_model))
    candidates = sorted({min(cap, 2**k) for k in range(0, 12)})
    probe_steps = 3
    if cap == 1 or recipe.steps < 10 * probe_steps:
        return cap
    probe = dataclasses.replace(recipe, steps=probe_steps)
    best, best_time = 1, float("inf")
    for k in candidates:
        weights = torch.ones(k, problem.n_train, dtype=problem.dtype, device=problem.device)
        start = problem.theta.unsqueeze(0).expand(k, -1)
        try:
            train(problem, start, weights, dataclasses.replace(probe, steps=1))  # warm-up
            _synchronize(problem)
            begin = time.perf_counter()
            train(problem, start, weights, probe)
            _synchronize(problem)
        except torch.OutOfMemoryError:
            # The planning estimate undercounts convolutional activations: the first size that does not fit
            # ends the search, and larger ones would not fit either.
            del weights, start
            torch.cuda.empty_cache()
            log.info("%s chunk size %d does not fit in memory", what, k)
            break
        per_model_time = (time.perf_counter() - begin) / k
        if per_model_time < best_time:
            best, best_time = k, per_model_time
    log.info("%s chunk size %d (of %s, timed %d steps each)", what, best, candidates, probe_steps)
    return best


def _synchronize(problem: Problem) -> None:
    if problem.device.type == "cuda":
        torch.cuda.synchronize(problem.device)


class GroundTruth:
    """Leave-one-out effects on one test point, for one trained problem and re-training recipe.

    Args:
        problem: the problem at its optimum.
        recipe: the re-training recipe (its ``seed`` fixes the minibatch order shared by every model).
        cache: where entries live.
        key: everything else that determines the problem (task, version, config, seed); the test point, the recipe
            and :data:`RECIPE_VERSION` are added here.
        test_index: the test point whose loss is measured.
        chunk_size: how many models to re-train at once; ``None`` picks it (:meth:`choose_chunk_size`).
        progress: show progress bars.

    A subclass answers another question about the same removals with the same cache, locks and executors
    (:class:`benchmark.groundtruth.pbrf.PbrfGroundTruth`): it names its :attr:`kind` (the cache folder), its
    :attr:`effect_type` (an entry's fields) and :meth:`method_key`, and answers :meth:`respond` for a chunk of removals.
    """

    kind = "loo"
    """The ground truth's name, and its folder in the cache."""
    effect_type: type[LooEffect] = LooEffect
    """What one cache entry holds."""
    title = "leave-one-out"
    """How progress bars name it."""

    def __init__(
        self,
        problem: Problem,
        recipe: Recipe,
        cache: Cache,
        key: dict[str, Any],
        test_index: int,
        chunk_size: int | None = None,
        progress: bool = False,
    ):
        self.problem, self.recipe, self.cache = problem, recipe, cache
        self.test_index = int(test_index)
        self.chunk_size = None if chunk_size is None else max(1, int(chunk_size))
        self.progress = progress
        self.key = {**key, "test_index": self.test_index, **self.method_key()}
        self.directory = cache.root / self.kind / digest(self.key)
        self.stats = GroundTruthStats()
        self._reference: Reference | None = None
        self._corrupt: set[int] = set()

    def method_key(self) -> dict[str, Any]:
        """What, besides the problem and the test point, determines an entry: the re-training recipe and code."""
        recipe_key = dataclasses.asdict(self.recipe)
        if self.recipe.batch_size is None or self.recipe.batch_size >= self.problem.n_train:
            recipe_key["seed"] = None  # full-batch re-training never uses the minibatch seed: all seeds share entries
        return {
            "recipe": recipe_key,
            "recipe_version": RECIPE_VERSION,
            "dtype": str(self.problem.dtype),
            **evaluation_key(self.problem),
        }

    # -- public ------------------------------------------------------------------------------------------------------
    def reference(self) -> Reference:
        """The full-data reference, from the cache or re-trained now."""
        if self._reference is not None:
            return self._reference

        def retrain_reference() -> dict[str, Tensor]:
            weights = torch.ones(1, self.problem.n_train, dtype=self.problem.dtype, device=self.problem.device)
            return {"theta": self.retrain(weights, "re-training reference")[0]}

        # Cache.tensors locks the entry only to compute it: a complete read-only cache is read without writing.
        theta = self.cache.tensors("loo-reference", self._entry_key("reference"), retrain_reference)["theta"]
        theta = theta.to(device=self.problem.device, dtype=self.problem.dtype)
        losses = self._test_losses(torch.stack([theta, self.problem.theta]))
        self._reference = Reference(float(losses[0]), float(losses[1]), theta)
        return self._reference

    def missing(self, removed: Sequence[int]) -> list[int]:
        """The points of ``removed`` without a valid cache entry (sorted, without repeats)."""
        return [i for i in sorted({int(i) for i in removed}) if self._load(i) is None]

    def effects(
        self, removed: Sequence[int], executor: Callable[[GroundTruth, list[int]], int] | None = None
    ) -> dict[int, LooEffect]:
        """Leave-one-out effects of removing each point in ``removed``; only points without a cache entry are computed.

        Args:
            removed: training indices.
            executor: ``executor(ground_truth, missing) -> number computed`` computes the missing points into the
                cache, e.g. on other processes or machines (:mod:`benchmark.groundtruth.executors`); in this process
                (:meth:`compute`) if ``None``.
        """
        start = time.perf_counter()
        wanted = sorted({int(i) for i in removed})
        found = {i: effect for i in wanted if (effect := self._load(i)) is not None}
        missing = [i for i in wanted if i not in found]
        self.stats.cached += len(wanted) - len(missing)
        if missing:
            self.reference()
            if executor is None:
                bar = tqdm(
                    total=len(wanted),
                    initial=len(wanted) - len(missing),
                    desc=self.title,
                    unit="model",
                    disable=not self.progress,
                    mininterval=0.5,
                )
                bar.set_postfix_str(f"{len(wanted) - len(missing)} cached")
                computed = self.compute(missing, on_chunk=bar.update)
                bar.close()
            else:
                computed = executor(self, missing)
            self.stats.computed += computed
            self.stats.cached += len(missing) - computed  # finished meanwhile by another process
        for i in missing:  # only these are read again: the cached ones were loaded above
            effect = self._load(i)
            if effect is None:
                raise RuntimeError(f"leave-one-out entry {i} is missing after computing it ({self.directory})")
            found[i] = effect
        self.stats.seconds += time.perf_counter() - start
        return {int(i): found[int(i)] for i in removed}

    def compute(self, indices: Sequence[int], on_chunk: Callable[[int], None] | None = None) -> int:
        """Compute and store the entries of ``indices`` that no one else has, a chunk at a time, each entry claimed
        with a file lock first (:func:`compute_claimed`: processes on one cache share the work, and one takes over
        what a dead one left); returns how many it computed."""
        reference = self.reference()
        self.directory.mkdir(parents=True, exist_ok=True)
        return compute_claimed(
            indices,
            lambda i: FileLock(self.directory / f".{i}.lock"),
            lambda i: self._load(i) is None,
            lambda chunk: self._compute_chunks(chunk, reference, on_chunk),
            self.choose_chunk_size,
            on_chunk,
        )

    def choose_chunk_size(self, n_models: int) -> int:
        """How many models to stack (:func:`fastest_chunk_size`; fixed where ``chunk_size`` was given)."""
        if self.chunk_size is None:
            self.chunk_size = fastest_chunk_size(self.problem, self.recipe, n_models)
        return self.chunk_size

    # -- re-training -------------------------------------------------------------------------------------------------
    def _compute_chunks(self, indices: list[int], reference: Reference, on_chunk: Callable[[int], None] | None) -> int:
        if not indices:
            return 0
        chunk_size = self.choose_chunk_size(len(indices))
        self.stats.chunk_size = chunk_size
        for begin in range(0, len(indices), chunk_size):
            chunk = indices[begin : begin + chunk_size]
            thetas, losses, extra = self.respond(chunk)
            norms = torch.linalg.vector_norm(thetas - reference.theta.to(thetas), dim=1)
            for j, (i, loss, norm) in enumerate(zip(chunk, losses.tolist(), norms.tolist())):
                fields = {name: values[j] for name, values in extra.items()}
                self._store(self.effect_type(i, loss - reference.test_loss, loss, norm, **fields))
            if on_chunk is not None:
                on_chunk(len(chunk))
        return len(indices)

    def respond(self, removed: list[int]) -> tuple[Tensor, Tensor, dict[str, list[Any]]]:
        """The models with each point of ``removed`` taken out, one per row (``Tensor[m, P]``), their test losses
        (``Tensor[m]``), and the :attr:`effect_type` fields beyond those of :class:`LooEffect`, a list of ``m`` values
        each: here, the models re-trained from the optimum with :attr:`recipe` (:meth:`retrain`), no further fields."""
        weights = removal_weights(removed, self.problem.n_train, self.problem.dtype, self.problem.device)
        thetas = self.retrain(weights, f"re-training {len(removed)} models")
        return thetas, self._test_losses(thetas), {}

    def retrain(self, weights: Tensor, description: str) -> Tensor:
        """Re-train one model per row of ``weights`` (``Tensor[m, n]``, the training points' weights: 0 removes a
        point) from the optimum with :attr:`recipe`, and return their parameters ``Tensor[m, P]``.

        The one step every entry (the reference and each leave-one-out model) goes through: a subclass may route it
        to a task's own trainer or batch it with work it knows is coming, as long as each row's result stays the same.
        """
        start = self.problem.theta.unsqueeze(0).expand(len(weights), -1)
        return descend(self.problem, start, weights, self.recipe, self.progress, description)

    def _test_losses(self, thetas: Tensor) -> Tensor:
        x = self.problem.x_test[self.test_index : self.test_index + 1]
        y = self.problem.y_test[self.test_index : self.test_index + 1]
        return torch.stack([self.problem.losses_float64(theta, x, y)[0] for theta in thetas])

    # -- cache entries -----------------------------------------------------------------------------------------------
    def _entry_key(self, removed: int | str) -> dict[str, Any]:
        return {**self.key, "removed": removed}

    def _load(self, i: int) -> LooEffect | None:
        """The entry of point ``i``; ``None`` if absent or corrupt (damaged, or intact but written for another point or
        ground truth, e.g. copied or renamed by hand: counted in :attr:`stats` and recomputed)."""
        path = self.directory / f"{i}.json"
        try:
            payload = self.cache.read_json(path, self._entry_key(i))
        except CacheError:
            log.warning("cache entry %s was written for another point or ground truth: recomputing it", path)
            payload = None
        else:
            if payload is not None and not valid_payload(payload, self.effect_type):
                log.warning("corrupt cache entry %s (unexpected fields): recomputing it", path)
                payload = None
        if payload is None:
            if path.exists():
                self._corrupt.add(i)
                self.stats.corrupt = len(self._corrupt)
            return None
        return self.effect_type(removed=i, **payload)

    def _store(self, effect: LooEffect) -> None:
        payload = dataclasses.asdict(effect)
        del payload["removed"]
        self.cache.write_json(self.directory / f"{effect.removed}.json", self._entry_key(effect.removed), payload)


def compute_claimed(
    items: Sequence[int],
    lock_of: Callable[[int], FileLock],
    missing: Callable[[int], bool],
    compute: Callable[[list[int]], int],
    chunk_size: Callable[[int], int],
    on_done: Callable[[int], None] | None = None,
) -> int:
    """Compute the cache entries ``items`` that are ``missing``, sharing the work with other processes on the same
    cache; returns how many were computed here.

    Each round claims, in order and without waiting, up to ``chunk_size(n)`` missing entries (``n``: how many were
    missing at the start) by their ``lock_of`` file locks, computes them (``compute`` stores them) and releases them,
    so another process claims the next entries meanwhile instead of waiting for all of this one's. Entries another
    process holds are skipped; once only those are left, the first is waited for and then computed here if its owner
    died before writing it. No lock is held while waiting, so processes cannot deadlock. Entries found written by
    another process count towards ``on_done``.
    """
    wanted = {int(i) for i in items}
    pending = sorted(i for i in wanted if missing(i))
    if on_done is not None and len(pending) < len(wanted):
        on_done(len(wanted) - len(pending))
    size = chunk_size(len(pending)) if pending else 1
    computed = 0
    while pending:
        claimed: list[tuple[int, FileLock]] = []
        settled: set[int] = set()
        try:
            for i in pending:
                if len(claimed) == size:
                    break
                lock = lock_of(i)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # another process is computing it
                if missing(i):
                    claimed.append((i, lock))
                else:  # written by another process since
                    lock.release()
                    settled.add(i)
            if not claimed and len(settled) < len(pending):  # only entries others hold are left: wait for one
                i = next(i for i in pending if i not in settled)
                lock = lock_of(i)
                lock.acquire()
                if missing(i):  # its owner died before writing it
                    claimed.append((i, lock))
                else:
                    lock.release()
                    settled.add(i)
            chunk = [i for i, _ in claimed]
            if chunk:
                computed += compute(chunk)
        finally:
            for _, lock in claimed:
                lock.release()
        if on_done is not None and settled:
            on_done(len(settled))
        done = settled | set(chunk)
        pending = [i for i in pending if i not in done]
    return computed


def removal_weights(removed: list[int], n_train: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``Tensor[len(removed), n_train]`` of ones, with row ``j``'s weight of point ``removed[j]`` set to 0."""
    weights = torch.ones(len(removed), n_train, dtype=dtype, device=device)
    weights[torch.arange(len(removed)), torch.tensor(removed)] = 0.0
    return weights


def valid_payload(payload: Any, effect_type: type[LooEffect] = LooEffect) -> bool:
    """Whether a cache entry's ``payload`` has exactly the fields of ``effect_type`` (but ``removed``), each a
    number."""
    fields = {field.name for field in dataclasses.fields(effect_type)} - {"removed"}
    return (
        isinstance(payload, dict)
        and set(payload) == fields
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in payload.values())
    )
