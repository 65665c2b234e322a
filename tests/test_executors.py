"""Executors: a local process pool and a Ray cluster give the ground truth the local executor gives."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from benchmark.common.cache import Cache
from benchmark.common.errors import UnknownNameError
from benchmark.groundtruth.executors import EXECUTORS, ProcessPool, RayCluster, WorkerSpec, make_executor, shards

POINTS = 16
GT = (
    "gt",
    "--task",
    "iris",
    "--set",
    "iris.train_steps=300",
    "--set",
    "iris.retrain_steps=50",
    "--no-progress",
    "--points",
    str(POINTS),
    "--gt-chunk-size",
    "1",
)
"""A tiny ground truth whose entries are each re-trained alone, so that any executor's are bit-identical."""

GT_LINE = re.compile(r"(?P<points>\d+) points for test point \d+: (?P<cached>\d+) cached, (?P<computed>\d+) computed")


def summary(output: str) -> dict[str, int]:
    (match,) = GT_LINE.finditer(output)
    return {k: int(v) for k, v in match.groupdict().items()}


def entries(cache: Path) -> dict[str, bytes]:
    """The leave-one-out entries of the single ground truth in ``cache``: file name -> bytes (all verified)."""
    (directory,) = (cache / "loo").glob("*")
    found = {p.name: p.read_bytes() for p in directory.glob("*.json") if p.stem.isdigit()}
    for name in found:
        assert Cache.verified_entry(directory / name) is not None, name
    return found


@pytest.fixture(scope="module")
def local_entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The entries the local executor computes for :data:`GT`."""
    import logging

    import torch

    from benchmark.cli import main

    cache = tmp_path_factory.mktemp("local") / "cache"
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*GT, "--cache-dir", str(cache)]) == 0
    finally:
        torch.set_num_threads(threads)
        root.handlers[:] = handlers
        root.setLevel(level)
    found = entries(cache)
    assert len(found) == POINTS
    return found


# -- the process pool -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_process_pool_run_records_equal_the_local_ones(bench, tmp_path, read_records):
    run = (
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "random",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--gt-chunk-size",
        "1",
        "--no-progress",
        "--no-leaderboard",
    )
    local = bench(*run, "--cache-dir", tmp_path / "local-cache", "--results-dir", tmp_path / "local")
    assert local.code == 0, local.err
    pooled = bench(
        *run,
        "--executor",
        "process",
        "--workers",
        "2",
        "--cache-dir",
        tmp_path / "pool-cache",
        "--results-dir",
        tmp_path / "pool",
    )
    assert pooled.code == 0, pooled.err
    (a,), (b,) = read_records(tmp_path / "local"), read_records(tmp_path / "pool")
    assert b["ground_truth"]["executor"] == "process" and a["ground_truth"]["executor"] == "local"
    assert b["ground_truth"]["computed"] == b["ground_truth"]["points"] == 20
    assert b["points"] == a["points"]  # the same loss changes, bit for bit
    assert b["metrics"] == a["metrics"]
    assert entries(tmp_path / "pool-cache") == entries(tmp_path / "local-cache")

    again = bench(
        "gt",
        "--task",
        "iris",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--points",
        "random",
        "--gt-chunk-size",
        "1",
        "--no-progress",
        "--executor",
        "process",
        "--workers",
        "2",
        "--cache-dir",
        tmp_path / "pool-cache",
    )
    assert again.code == 0, again.err
    assert summary(again.out) == {"points": 20, "cached": 20, "computed": 0}  # `bench gt --points random` = the run's


# -- Ray --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real local Ray instance with two CPUs (its token file under a temporary home, not the user's)."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("ray-home")))
        patch.delenv("RAY_AUTH_MODE", raising=False)  # Ray sets it in this process; put back afterwards
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_local_entries(bench, tmp_path, local_entries, ray_cluster):
    assert ray_cluster.is_initialized() and ray_cluster.cluster_resources()["CPU"] == 2
    cache = tmp_path / "cache"
    result = bench(*GT, "--executor", "ray", "--cache-dir", cache)
    assert result.code == 0, result.err
    assert summary(result.out) == {"points": POINTS, "cached": 0, "computed": POINTS}
    assert entries(cache) == local_entries  # same keys, same floats, byte for byte

    # a partly filled cache: Ray computes only what is missing
    (directory,) = (cache / "loo").glob("*")
    removed = sorted(p for p in directory.glob("*.json") if p.stem.isdigit())[:5]
    for path in removed:
        path.unlink()
    again = bench(*GT, "--executor", "ray", "--cache-dir", cache)
    assert again.code == 0, again.err
    assert summary(again.out) == {"points": POINTS, "cached": POINTS - 5, "computed": 5}
    assert entries(cache) == local_entries


@pytest.mark.slow
def test_ray_run_reports_its_executor_and_computed_count(bench, tmp_path, read_records, ray_cluster):
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "random",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--no-progress",
        "--no-leaderboard",
        "--executor",
        "ray",
        "--gt-chunk-size",
        "4",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path / "results")
    gt = record["ground_truth"]
    assert gt["executor"] == "ray"
    assert gt["points"] == 20 and gt["computed"] == 20 and gt["cached"] == 0
    assert record["status"] == "ok"
    assert len(record["points"]["retrained"]) == 20


@pytest.mark.slow
def test_ray_trains_the_local_subset_models(bench, tmp_path, read_records, ray_cluster):
    run = (
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--truth",
        "lds",
        "--lds-subsets",
        "6",
        "--lds-test-points",
        "5",
        "--gt-chunk-size",
        "3",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--no-progress",
        "--no-leaderboard",
    )
    local = bench(*run, "--cache-dir", tmp_path / "a", "--results-dir", tmp_path / "ra")
    remote = bench(*run, "--executor", "ray", "--cache-dir", tmp_path / "b", "--results-dir", tmp_path / "rb")
    assert local.code == 0 and remote.code == 0, (local.err, remote.err)
    (a,), (b,) = read_records(tmp_path / "ra"), read_records(tmp_path / "rb")
    assert b["ground_truth"]["executor"] == "ray" and b["ground_truth"]["computed"] == 6
    assert b["metrics"] == a["metrics"]  # the same subset models, so the same scores


SLOW = (
    "gt",
    "--task",
    "iris",
    "--set",
    "iris.train_steps=300",
    "--set",
    "iris.retrain_steps=600",
    "--no-progress",
    "--points",
    "32",
    "--gt-chunk-size",
    "4",
)
"""32 points in chunks of 4 (about 0.4 s each): Ray's 2 CPUs get shards of 8 points, two chunks each."""


def _raylet_children(ray) -> dict[int, str]:
    """The processes our Ray instance's raylet started: pid -> command line (process title)."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = subprocess.run(["pgrep", "-P", str(raylet)], capture_output=True, text=True).stdout.split()
    out = {}
    for pid in map(int, found):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            pass
    return out


def _held_entry_locks(pids: list[int], directory: Path) -> dict[int, set[int]]:
    """The entry indices whose lock each of ``pids`` holds (from /proc/locks)."""
    inodes = {}
    for path in directory.glob(".*.lock"):
        stem = path.name[1 : -len(".lock")]
        if stem.isdigit():
            inodes[path.stat().st_ino] = int(stem)
    held: dict[int, set[int]] = {pid: set() for pid in pids}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and int(fields[4]) in held:
            inode = int(fields[5].rsplit(":", 1)[1])
            if inode in inodes:
                held[int(fields[4])].add(inodes[inode])
    return held


@pytest.mark.slow
def test_ray_retries_a_killed_worker_and_computes_only_what_it_lost(bench, tmp_path, ray_cluster):
    local = bench(*SLOW, "--cache-dir", tmp_path / "local")
    assert local.code == 0, local.err
    cache = tmp_path / "cache"
    killed: list[tuple[int, set[int]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def kill_a_worker_between_chunks() -> None:
        try:
            deadline = time.monotonic() + 120
            count, since = -1, time.monotonic()
            claimed: dict[int, set[int]] = {}  # every entry lock each worker has been seen holding
            while not done.is_set():
                assert time.monotonic() < deadline, "no pause between chunks within 120 s"
                directories = list((cache / "loo").glob("*"))
                present = (
                    {int(p.stem) for p in directories[0].glob("*.json") if p.stem.isdigit()} if directories else set()
                )
                held: dict[int, set[int]] = {}
                if directories:
                    workers = [
                        pid
                        for pid, cmd in _raylet_children(ray_cluster).items()
                        if cmd.startswith("ray::compute_shard")
                    ]
                    held = _held_entry_locks(workers, directories[0])
                    for pid, locked in held.items():
                        claimed.setdefault(pid, set()).update(locked)
                now = time.monotonic()
                if len(present) != count:
                    count, since = len(present), now
                elif count and now - since >= 0.1:
                    # a worker that has written a chunk (claimed, released, on disk) and has a chunk still in flight;
                    # entries are claimed a chunk at a time, so its written ones are those it held before
                    candidates = [
                        (pid, (claimed[pid] - locked) & present)
                        for pid, locked in held.items()
                        if (claimed[pid] - locked) & present and locked - present
                    ]
                    if candidates:
                        pid, written = candidates[0]
                        os.kill(pid, signal.SIGKILL)
                        killed.append((pid, written))
                        return
                time.sleep(0.005)
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    killer = threading.Thread(target=kill_a_worker_between_chunks, daemon=True)
    killer.start()
    try:
        result = bench(*SLOW, "--executor", "ray", "--cache-dir", cache)
    finally:
        done.set()
        killer.join(timeout=30)
    assert not errors, errors
    assert len(killed) == 1, "no worker was caught between two chunks of its shard"
    assert result.code == 0, result.err  # Ray retried the killed worker's shard
    line = summary(result.out)
    _, written = killed[0]
    assert len(written) >= 4  # at least one finished chunk of the killed shard
    # the killed attempt's finished entries are reused by the retry, which computes only the rest of its shard
    assert line == {"points": 32, "cached": len(written), "computed": 32 - len(written)}
    ours, theirs = entries(cache), entries(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) and len(ours) == 32
    for name in ours:  # the retry's chunks may be composed differently: equal up to round-off
        a, b = json.loads(ours[name])["payload"], json.loads(theirs[name])["payload"]
        assert a == pytest.approx(b, rel=1e-9, abs=1e-13), name


# -- choosing an executor ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["gt", "run"])
def test_unknown_executor_is_a_one_line_error_with_a_suggestion(bench, tmp_path, command):
    results = ("--results-dir", tmp_path / "results") if command == "run" else ()
    result = bench(
        command,
        "--task",
        "iris",
        "--set",
        "iris.train_steps=300",
        "--no-progress",
        "--executor",
        "procss",
        "--cache-dir",
        tmp_path / "cache",
        *results,
    )
    assert result.code == 2
    assert result.err_lines == [
        "bench: error: unknown executor 'procss' (choices: local, process, ray); did you mean 'process'?"
    ]
    assert not (tmp_path / "cache").exists()  # rejected before training anything
    assert not (tmp_path / "results").exists()


def test_make_executor():
    def spec_for(ground_truth):
        raise AssertionError("not called")

    assert EXECUTORS == ("local", "process", "ray")
    assert make_executor("local", spec_for) is None
    pool = make_executor("process", spec_for, workers=3, shard_size=5)
    assert isinstance(pool, ProcessPool) and pool.workers == 3 and pool.shard_size == 5
    cluster = make_executor("ray", spec_for, address="ray://nowhere:1")
    assert isinstance(cluster, RayCluster) and cluster.address == "ray://nowhere:1"
    with pytest.raises(UnknownNameError, match="did you mean 'ray'"):
        make_executor("rey", spec_for)


@pytest.mark.parametrize("n, workers, size", [(48, 2, None), (7, 3, None), (5, 8, None), (10, 2, 3), (1, 4, None)])
def test_shards_cover_every_index_once(n, workers, size):
    indices = list(range(100, 100 + n))
    parts = shards(indices, workers, size)
    assert [i for part in parts for i in part] == indices
    assert all(part for part in parts)
    expected = size or -(-n // (2 * workers))
    assert all(len(part) <= expected for part in parts)
    if size is None:
        assert len(parts) <= 2 * workers


def test_worker_spec_is_plain_data_that_rebuilds_the_ground_truth(tmp_path):
    """The spec the driver sends (as Run.executor builds it) round-trips through JSON and names the same entries."""
    from benchmark.contracts.plugins import Registry, plugin_manager
    from benchmark.contracts.run_config import RunConfig
    from benchmark.evaluation.runner import Run
    from benchmark.groundtruth.engine import GroundTruth
    from benchmark.groundtruth.executors import compute_shard

    pm = plugin_manager()
    config = RunConfig(
        task="iris",
        estimators=[],
        task_options={"train_steps": 300, "retrain_steps": 50},
        cache_dir=tmp_path / "cache",
        progress=False,
        gt_chunk_size=4,
        executor="process",
        workers=2,
    )
    run = Run(config, Registry(pm), pm)
    problem, protocol, test_index, _ = run.build_problem()
    (ground_truth,) = run.ground_truths(problem, protocol, test_index)
    executor = run.executor()
    spec = executor.spec_for(ground_truth)
    assert isinstance(spec, WorkerSpec)
    assert WorkerSpec(**json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
    assert spec.test_index == test_index and spec.chunk_size == 4 and spec.cache_dir == str(tmp_path / "cache")

    ground_truth.reference()  # the driver computes the reference before handing out shards
    assert compute_shard(spec, [3, 1, 2]) == 3  # in this process: the worker's own code path
    assert compute_shard(spec, [1, 2, 3, 4]) == 1  # only what is missing
    assert ground_truth.missing(range(5)) == [0]
    local = GroundTruth(problem, protocol.retrain, Cache(tmp_path / "local"), run.task.problem_key(0), test_index, 4)
    mine = local.effects([1, 2, 3, 4])
    theirs = ground_truth.effects([1, 2, 3, 4])
    assert ground_truth.stats.computed == 0
    assert {i: e.loss_change for i, e in theirs.items()} == pytest.approx(
        {i: e.loss_change for i, e in mine.items()}, rel=1e-10, abs=1e-13
    )
