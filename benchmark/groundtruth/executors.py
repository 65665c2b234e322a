"""Where ground-truth models are trained: in this process (default), a local process pool, or a Ray cluster.

Remote workers receive a :class:`WorkerSpec` (plain data, no pickled models), rebuild the problem from the task and
its cached optimum, and write entries into the shared cache directory through the ground truth's ``compute``
(:meth:`GroundTruth.compute`: leave-one-out models, one per removed point; :meth:`SubsetGroundTruth.compute`: the
linear datamodeling score's subset models, one per subset), which claims each entry with a file lock. The driver
then reads the entries back, so every executor produces the same ground truth, and a worker killed mid-shard loses
only the models in flight.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from benchmark.common.errors import BenchError, UnknownNameError, UsageError

EXECUTORS = ("local", "process", "ray")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to rebuild one ground truth: all JSON-able values."""

    plugins: list[str]
    task: str
    task_options: dict[str, Any]
    seed: int
    device: str
    cache_dir: str
    chunk_size: int | None
    threads: int | None = None
    truth: str = "loo"
    """``loo``, ``pbrf``, ``prox``, ``loo-scratch``: the shard's indices are removed training points; ``lds``:
    subsets."""
    test_index: int | None = None
    """``loo``, ``pbrf``, ``prox``, ``loo-scratch``: the test point."""
    recipe: dict[str, Any] | None = None
    """``loo``: the re-training recipe."""
    lds: dict[str, Any] | None = None
    """``lds``: ``{"design": SubsetDesign fields, "train_seed": r}``."""
    pbrf: dict[str, Any] | None = None
    """``pbrf`` and ``prox``: the :class:`~benchmark.groundtruth.pbrf.PbrfSolver` fields."""
    train_seed: int | None = None
    """``loo-scratch``: the training seed."""


def compute_shard(spec: WorkerSpec, indices: list[int]) -> int:
    """Worker entry point: rebuild the problem and compute ``indices`` into the cache; returns how many it computed."""
    import torch

    from benchmark.common import config as configuration
    from benchmark.common.cache import Cache
    from benchmark.contracts.plugins import Registry, plugin_manager
    from benchmark.contracts.task import BuildContext
    from benchmark.groundtruth.engine import GroundTruth
    from benchmark.groundtruth.lds import SubsetDesign, SubsetGroundTruth
    from benchmark.groundtruth.pbrf import PbrfGroundTruth, PbrfSolver, ProximalGroundTruth
    from benchmark.groundtruth.scratch import ScratchGroundTruth
    from benchmark.numerics.recipes import Recipe

    registry = Registry(plugin_manager(spec.plugins))
    task_cls = registry.task(spec.task)
    task = task_cls(configuration.build(task_cls.Config, spec.task_options, spec.task))
    threads = spec.threads or (task.cpu_threads if spec.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    cache = Cache(spec.cache_dir)
    problem = task.build(BuildContext(spec.device, spec.seed, cache, progress=False))
    key = task.problem_key(spec.seed)
    if spec.truth == "lds":
        assert spec.lds is not None
        design = SubsetDesign(**spec.lds["design"])
        subsets = SubsetGroundTruth(problem, design, cache, key, spec.lds["train_seed"], spec.chunk_size)
        return subsets.compute(indices)
    if spec.truth == "loo-scratch":
        assert spec.train_seed is not None and spec.test_index is not None
        scratch = ScratchGroundTruth(problem, cache, key, spec.test_index, spec.train_seed, spec.chunk_size)
        return scratch.compute(indices)
    if spec.truth in ("pbrf", "prox"):
        assert spec.pbrf is not None and spec.test_index is not None
        kind = ProximalGroundTruth if spec.truth == "prox" else PbrfGroundTruth
        pbrf = kind(problem, PbrfSolver(**spec.pbrf), cache, key, spec.test_index, spec.chunk_size)
        return pbrf.compute(indices)
    assert spec.recipe is not None and spec.test_index is not None
    ground_truth = GroundTruth(problem, Recipe(**spec.recipe), cache, key, spec.test_index, spec.chunk_size)
    return ground_truth.compute(indices)


def shards(indices: list[int], workers: int, shard_size: int | None = None) -> list[list[int]]:
    """Split ``indices`` into shards: ``shard_size`` each, or two per worker by default (to balance the load)."""
    size = shard_size or max(1, math.ceil(len(indices) / (2 * workers)))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessPool:
    """Shards over ``workers`` local processes (spawned, each with ``cpu_count // workers`` torch threads)."""

    def __init__(self, spec_for: Callable[[Any], WorkerSpec], workers: int, shard_size: int | None = None):
        self.spec_for, self.workers, self.shard_size = spec_for, workers, shard_size

    def __call__(self, ground_truth: Any, missing: list[int]) -> int:
        spec = self.spec_for(ground_truth)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = multiprocessing.get_context("spawn")
        computed = 0
        with concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_limit_threads, initargs=(threads,)
        ) as pool:
            futures = {
                pool.submit(compute_shard, spec, shard): len(shard)
                for shard in shards(missing, self.workers, self.shard_size)
            }
            with tqdm(
                total=len(missing), desc="ground truth (processes)", unit="model", disable=not ground_truth.progress
            ) as bar:
                try:
                    for future in concurrent.futures.as_completed(futures):
                        computed += future.result()
                        bar.update(futures[future])
                except concurrent.futures.process.BrokenProcessPool:
                    raise BenchError(
                        "a ground-truth worker process died; the entries it finished are cached, "
                        "so rerunning the same command completes only the missing ones"
                    ) from None
        return computed


class RayCluster:
    """Shards as Ray tasks on the cluster at ``address`` (or ``$RAY_ADDRESS``; a local one if neither is set).

    Each task asks for one CPU, and one GPU when the device is CUDA. Ray retries a task whose worker died; the retry
    computes only the entries still missing.
    """

    def __init__(
        self, spec_for: Callable[[Any], WorkerSpec], address: str | None = None, shard_size: int | None = None
    ):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        self.ray = ray
        self.spec_for, self.address, self.shard_size = spec_for, address, shard_size

    def __call__(self, ground_truth: Any, missing: list[int]) -> int:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
        spec = self.spec_for(ground_truth)
        gpus = 1 if spec.device.startswith("cuda") else 0
        workers = max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1)))
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=3)(compute_shard)
        pending = {task.remote(spec, shard): len(shard) for shard in shards(missing, workers, self.shard_size)}
        computed = 0
        with tqdm(
            total=len(missing), desc="ground truth (ray)", unit="model", disable=not ground_truth.progress
        ) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    computed += ray.get(ref)
                    bar.update(pending.pop(ref))
        return computed


def make_executor(
    name: str,
    spec_for: Callable[[Any], WorkerSpec],
    workers: int | None = None,
    address: str | None = None,
    shard_size: int | None = None,
) -> Callable[[Any, list[int]], int] | None:
    """The executor called ``name`` (``None`` for ``local``, which computes in this process)."""
    if name not in EXECUTORS:
        raise UnknownNameError("executor", name, EXECUTORS)
    if name == "local":
        return None
    if name == "process":
        return ProcessPool(spec_for, workers or os.cpu_count() or 1, shard_size)
    return RayCluster(spec_for, address, shard_size)
