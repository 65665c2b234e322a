"""The leave-one-out ground truth: batching, chunk sizes, re-training seeds, concurrency, crashes, status, scoring."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import benchmark.groundtruth.engine as groundtruth
from benchmark import BuildContext, Recipe
from benchmark.cli import main
from benchmark.common.cache import Cache
from benchmark.evaluation.scoring import bootstrap_interval, correlation, repeat_ceiling
from benchmark.evaluation.selections import select_test_point
from benchmark.groundtruth.engine import GroundTruth
from tasks.iris import Iris, IrisConfig

TINY_RETRAIN = Recipe(steps=50, lr=0.5)
"""The tiny Iris re-training recipe (iris.retrain_steps=50, full batch)."""

# The slow configuration of the crash and concurrency tests: 48 points in chunks of 8 (6 chunks), 600 re-training
# steps (about half a second per chunk on one thread), so that a process can be caught between chunks.
SLOW_POINTS = 48
SLOW_CHUNK = 8
SLOW = (
    "gt",
    "--task",
    "iris",
    "--set",
    "iris.train_steps=300",
    "--set",
    "iris.retrain_steps=600",
    "--gt-chunk-size",
    str(SLOW_CHUNK),
    "--points",
    str(SLOW_POINTS),
    "--no-progress",
)

GT_LINE = re.compile(
    r"seed (?P<seed>\S+): (?P<points>\d+) points for test point (?P<test>\d+): (?P<cached>\d+) cached, "
    r"(?P<computed>\d+) computed, (?P<corrupt>\d+) corrupt recomputed, (?P<seconds>[\d.]+) s \((?P<directory>[^)]+)\)"
)
"""The summary line ``bench gt`` prints per re-training seed."""


def gt_lines(output: str) -> list[dict]:
    found = [m.groupdict() for m in GT_LINE.finditer(output)]
    for line in found:
        for name in ("points", "test", "cached", "computed", "corrupt"):
            line[name] = int(line[name])
        line["seconds"] = float(line["seconds"])
    return found


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def entry_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if p.stem.isdigit())


def loo_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "loo").glob("*") if p.is_dir())


def only_loo_dir(cache: Path) -> Path:
    (directory,) = loo_dirs(cache)
    return directory


def count_entries(cache: Path) -> int:
    return sum(len(entry_files(d)) for d in loo_dirs(cache))


def verified_payloads(directory: Path) -> dict[int, dict]:
    """Every entry of a ground-truth directory, checksum-verified: removed index -> payload."""
    out = {}
    for path in entry_files(directory):
        entry = Cache.verified_entry(path)
        assert entry is not None, f"{path} does not verify"
        assert entry["key"]["removed"] == int(path.stem), path
        out[int(path.stem)] = entry["payload"]
    return out


def assert_same_effects(actual: dict[int, dict], expected: dict[int, dict]) -> None:
    """Same points, and the same values up to float64 round-off (chunks of another composition may differ by ulps)."""
    assert sorted(actual) == sorted(expected)
    for i, payload in actual.items():
        for field in ("loss_change", "test_loss", "param_change_norm"):
            assert payload[field] == pytest.approx(expected[i][field], rel=1e-9, abs=1e-13), (i, field)


def call_main(argv: list[str]) -> int:
    """``benchmark.cli.main`` outside a test (module fixtures): one torch thread, the root logger put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)
        root.handlers[:] = handlers
        root.setLevel(level)


def start(argv: list[str], log: Path, request: pytest.FixtureRequest, cwd: Path) -> subprocess.Popen:
    """Start ``python -m benchmark.cli argv`` (killed at teardown if still running)."""
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmark.cli", *argv],
            cwd=cwd,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    request.addfinalizer(lambda: (child.kill(), child.wait()) if child.poll() is None else None)
    return child


# -- an Iris problem built in this process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory):
    """The tiny Iris task, its problem at the optimum, its key and its max-loss test point."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = Iris(IrisConfig(train_steps=300, retrain_steps=50))
        problem = task.build(BuildContext("cpu", 0, Cache(tmp_path_factory.mktemp("iris-optimum")), False))
    finally:
        torch.set_num_threads(threads)
    test_index, _ = select_test_point(problem, "max-loss")
    return task, problem, task.problem_key(0), test_index


def ground_truth(iris, cache_dir: Path, recipe: Recipe = TINY_RETRAIN, chunk_size: int | None = None) -> GroundTruth:
    _, problem, key, test_index = iris
    return GroundTruth(problem, recipe, Cache(cache_dir), key, test_index, chunk_size)


def as_tuples(effects: dict) -> dict[int, tuple[float, float, float]]:
    return {i: (e.loss_change, e.test_loss, e.param_change_norm) for i, e in effects.items()}


def assert_close_effects(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for i in actual:
        assert actual[i].removed == expected[i].removed == i
        assert actual[i].loss_change == pytest.approx(expected[i].loss_change, rel=1e-10, abs=1e-13), i
        assert actual[i].test_loss == pytest.approx(expected[i].test_loss, rel=1e-10, abs=1e-13), i
        assert actual[i].param_change_norm == pytest.approx(expected[i].param_change_norm, rel=1e-10, abs=1e-13), i


# -- batching ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, step",
    [(TINY_RETRAIN, 1), (Recipe(steps=50, lr=0.1, batch_size=16, seed=3), 3)],
    ids=["full-batch", "minibatch"],
)
def test_batched_retraining_equals_one_at_a_time(iris, tmp_path, recipe, step):
    points = list(range(0, iris[1].n_train, step))  # every training point (every third with minibatches)
    n = len(points)
    single = ground_truth(iris, tmp_path / "single", recipe, chunk_size=1)
    alone = single.effects(points)
    assert single.stats.chunk_size == 1 and single.stats.computed == n
    values = np.array([e.loss_change for e in alone.values()])
    assert np.ptp(values) > 1e-6 and np.ptp([e.param_change_norm for e in alone.values()]) > 1e-6
    for chunk_size in (8, n):
        batched = ground_truth(iris, tmp_path / f"chunk{chunk_size}", recipe, chunk_size=chunk_size)
        assert batched.directory.name == single.directory.name  # chunking is not part of what an entry means
        effects = batched.effects(points)
        assert batched.stats.chunk_size == chunk_size and batched.stats.computed == n
        assert batched.reference().test_loss == single.reference().test_loss
        assert_close_effects(effects, alone)


# -- choosing the chunk size -----------------------------------------------------------------------------------------


def test_choose_chunk_size_times_the_candidates_that_fit(iris, tmp_path, monkeypatch):
    _, problem, _, _ = iris
    per_model = groundtruth.memory_per_model(problem, None)
    assert per_model > 0

    # plenty of memory: every power of two up to the number of models is a candidate
    monkeypatch.setattr(groundtruth, "free_memory", lambda device: 10**15)
    gt = ground_truth(iris, tmp_path / "a")
    chosen = gt.choose_chunk_size(20)
    assert chosen in {1, 2, 4, 8, 16, 20}
    assert gt.chunk_size == chosen
    with monkeypatch.context() as patch:
        patch.setattr(groundtruth, "fastest_chunk_size", lambda *a: pytest.fail("timed again instead of reusing it"))
        assert gt.choose_chunk_size(20) == chosen

    # memory for five models: the candidates stop at five
    monkeypatch.setattr(groundtruth, "free_memory", lambda device: int(5 * per_model / groundtruth.MEMORY_FRACTION))
    gt = ground_truth(iris, tmp_path / "b")
    assert gt.choose_chunk_size(20) in {1, 2, 4, 5}

    # fewer models than memory allows: never more than the models
    monkeypatch.setattr(groundtruth, "free_memory", lambda device: 10**15)
    gt = ground_truth(iris, tmp_path / "c")
    assert 1 <= gt.choose_chunk_size(3) <= 3


def test_explicit_chunk_size_is_used_as_given(iris, tmp_path, monkeypatch):
    monkeypatch.setattr(groundtruth, "free_memory", lambda device: pytest.fail("an explicit chunk size needs no probe"))
    gt = ground_truth(iris, tmp_path, chunk_size=6)
    assert gt.choose_chunk_size(100) == 6
    assert gt.choose_chunk_size(2) == 6
    assert ground_truth(iris, tmp_path, chunk_size=0).chunk_size == 1  # clamped to at least one model


def test_tiny_memory_falls_back_to_one_model_at_a_time(iris, tmp_path, monkeypatch):
    points = list(range(0, 120, 5))
    batched = ground_truth(iris, tmp_path / "batched", chunk_size=8).effects(points)
    monkeypatch.setattr(groundtruth, "free_memory", lambda device: 1)
    gt = ground_truth(iris, tmp_path / "tiny-memory")
    assert gt.choose_chunk_size(len(points)) == 1
    effects = gt.effects(points)
    assert gt.stats.chunk_size == 1 and gt.stats.computed == len(points)
    assert_close_effects(effects, batched)


# -- re-training seeds ------------------------------------------------------------------------------------------------


def test_minibatch_seeds_are_separate_ground_truths(iris, tmp_path):
    points = list(range(0, 120, 6))
    cache = tmp_path / "cache"
    first = ground_truth(iris, cache, Recipe(steps=50, lr=0.1, batch_size=16, seed=0))
    second = ground_truth(iris, cache, Recipe(steps=50, lr=0.1, batch_size=16, seed=1))
    assert first.key["recipe"]["seed"] == 0 and second.key["recipe"]["seed"] == 1
    assert first.directory != second.directory
    a, b = first.effects(points), second.effects(points)
    assert first.stats.computed == second.stats.computed == len(points)
    assert len(loo_dirs(cache)) == 2
    differences = [abs(a[i].loss_change - b[i].loss_change) for i in points]
    assert max(differences) > 1e-6  # another minibatch order is another re-training
    assert first.reference().test_loss != second.reference().test_loss

    again = ground_truth(iris, tmp_path / "again", Recipe(steps=50, lr=0.1, batch_size=16, seed=0)).effects(points)
    assert as_tuples(again) == as_tuples(a)  # the same seed is the same minibatch sequence, bit for bit


@pytest.mark.parametrize("batch_size", [None, 120, 500], ids=["full", "batch=n", "batch>n"])
def test_full_batch_seeds_share_one_ground_truth(iris, tmp_path, batch_size):
    points = list(range(0, 120, 6))
    cache = tmp_path / "cache"
    first = ground_truth(iris, cache, Recipe(steps=50, lr=0.5, batch_size=batch_size, seed=0))
    second = ground_truth(iris, cache, Recipe(steps=50, lr=0.5, batch_size=batch_size, seed=7))
    assert first.key["recipe"]["seed"] is None and second.key["recipe"]["seed"] is None
    assert first.directory == second.directory
    a = first.effects(points)
    b = second.effects(points)
    assert first.stats.computed == len(points)
    assert second.stats.computed == 0 and second.stats.cached == len(points)
    assert as_tuples(a) == as_tuples(b)
    assert len(loo_dirs(cache)) == 1


# -- processes sharing a cache, and crashes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding only the optimum of :data:`SLOW` (copy it before use)."""
    root = tmp_path_factory.mktemp("slow-base") / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Iris(IrisConfig(train_steps=300, retrain_steps=600)).build(BuildContext("cpu", 0, Cache(root), False))
    finally:
        torch.set_num_threads(threads)
    assert len(list((root / "optima").glob("*.pt"))) == 1
    assert not (root / "loo").exists()
    return root


@pytest.fixture(scope="module")
def slow_clean(slow_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """The entries of an uninterrupted single-process :data:`SLOW` run."""
    cache = tmp_path_factory.mktemp("slow-clean") / "cache"
    shutil.copytree(slow_base, cache)
    assert call_main([*SLOW, "--cache-dir", str(cache)]) == 0
    payloads = verified_payloads(only_loo_dir(cache))
    assert len(payloads) == SLOW_POINTS
    return payloads


@pytest.fixture
def slow_cache(slow_base: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(slow_base, cache)
    return cache


BARRIER = """
import pathlib, sys, time
from benchmark.cli import main  # the slow imports happen before the barrier
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


def start_together(
    cache: Path, tmp_path: Path, repo_root: Path, request: pytest.FixtureRequest
) -> tuple[list[subprocess.Popen], list[Path]]:
    """Two :data:`SLOW` processes on ``cache``, released at once after their imports."""
    children, logs = [], []
    go = tmp_path / "go"
    for name in ("a", "b"):
        logs.append(tmp_path / f"{name}.log")
        with logs[-1].open("w") as out:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    BARRIER,
                    str(tmp_path / f"ready-{name}"),
                    str(go),
                    *SLOW,
                    "--cache-dir",
                    str(cache),
                ],
                cwd=repo_root,
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        request.addfinalizer(lambda c=child: (c.kill(), c.wait()) if c.poll() is None else None)
        children.append(child)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in ("a", "b")):
        assert all(c.poll() is None for c in children), [log.read_text() for log in logs]
        assert time.monotonic() < deadline, "the processes did not start within 120 s"
        time.sleep(0.01)
    go.touch()  # both start building the problem and computing at the same moment
    return children, logs


def flocks_held(pids: list[int], directory: Path) -> dict[int, int]:
    """How many entry locks of ``directory`` each of ``pids`` holds (from /proc/locks)."""
    inodes = {p.stat().st_ino for p in directory.glob(".*.lock") if p.name != ".reference.lock"}
    held = dict.fromkeys(pids, 0)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and int(fields[4]) in held:
            if int(fields[5].rsplit(":", 1)[1]) in inodes:
                held[int(fields[4])] += 1
    return held


@pytest.mark.slow
def test_two_processes_share_a_cache_without_computing_an_entry_twice(
    slow_cache, slow_clean, tmp_path, repo_root, request
):
    children, logs = start_together(slow_cache, tmp_path, repo_root, request)
    for child in children:
        child.wait(timeout=120)
    outputs = [log.read_text() for log in logs]
    assert [c.returncode for c in children] == [0, 0], outputs

    lines = [gt_lines(out) for out in outputs]
    assert all(len(found) == 1 for found in lines), outputs
    a, b = lines[0][0], lines[1][0]
    assert a["directory"] == b["directory"]
    assert a["points"] == b["points"] == SLOW_POINTS
    assert a["computed"] + b["computed"] == SLOW_POINTS, outputs  # no entry computed twice, none left out
    assert a["cached"] + a["computed"] == b["cached"] + b["computed"] == SLOW_POINTS
    assert a["corrupt"] == b["corrupt"] == 0
    # they did overlap: the one that computed less was inside the ground truth while the other computed
    assert min(a["seconds"], b["seconds"]) >= 0.5, outputs

    directory = only_loo_dir(slow_cache)
    assert str(directory) == a["directory"]
    payloads = verified_payloads(directory)
    assert len(payloads) == SLOW_POINTS
    assert_same_effects(payloads, slow_clean)
    assert not list(directory.glob("*.tmp"))


@pytest.mark.slow
def test_a_process_takes_over_the_entries_of_a_killed_one(slow_cache, slow_clean, tmp_path, repo_root, request):
    children, logs = start_together(slow_cache, tmp_path, repo_root, request)
    at_kill = wait_between_chunks(slow_cache, children, logs, minimum=SLOW_POINTS - 2 * SLOW_CHUNK)
    held = flocks_held([c.pid for c in children], only_loo_dir(slow_cache))
    victim = max(children, key=lambda c: held[c.pid])
    assert held[victim.pid] >= SLOW_CHUNK, held  # it holds the locks of the entries it has still to write
    (survivor,) = [c for c in children if c is not victim]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    survivor.wait(timeout=120)
    output = logs[children.index(survivor)].read_text()
    assert survivor.returncode == 0, output
    (line,) = gt_lines(output)
    assert line["cached"] + line["computed"] == SLOW_POINTS
    assert line["computed"] >= SLOW_POINTS - at_kill  # what the killed process had not written, it computed
    payloads = verified_payloads(only_loo_dir(slow_cache))
    assert len(payloads) == SLOW_POINTS
    assert_same_effects(payloads, slow_clean)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_batch_resumes_with_only_the_missing_entries(
    slow_cache, slow_clean, tmp_path, repo_root, request, bench
):
    log = tmp_path / "killed.log"
    process = start([*SLOW, "--cache-dir", str(slow_cache)], log, request, repo_root)
    # each finished chunk is on disk while the next one is computed (not all written at the end)
    wait_between_chunks(slow_cache, process, log)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    directory = only_loo_dir(slow_cache)
    before = {p.name: p.read_bytes() for p in entry_files(directory)}
    assert SLOW_CHUNK <= len(before) < SLOW_POINTS, len(before)
    assert len(verified_payloads(directory)) == len(before)  # no torn entry

    started = time.monotonic()
    result = bench(*SLOW, "--cache-dir", slow_cache)
    assert result.code == 0, result.err
    assert time.monotonic() - started < 60  # the dead process's entry locks do not hold the rerun up
    (line,) = gt_lines(result.out)
    assert line["cached"] == len(before)
    assert line["computed"] == SLOW_POINTS - len(before)
    assert line["corrupt"] == 0
    after = {p.name: p.read_bytes() for p in entry_files(directory)}
    assert len(after) == SLOW_POINTS
    assert {name: after[name] for name in before} == before  # finished entries are reused, not rewritten
    assert_same_effects(verified_payloads(directory), slow_clean)


def wait_between_chunks(
    cache: Path,
    process: subprocess.Popen | list[subprocess.Popen],
    log: Path | list[Path],
    hold: float = 0.1,
    minimum: int = SLOW_CHUNK,
) -> int:
    """Wait until at least ``minimum`` entries (one chunk) are written, not all, and no entry has appeared for ``hold``
    seconds (so the processes are computing a later chunk, not writing one); returns the number of entries then."""
    processes = process if isinstance(process, list) else [process]
    logs = log if isinstance(log, list) else [log]
    deadline = time.monotonic() + 120
    count, since = -1, time.monotonic()
    while True:
        assert all(p.poll() is None for p in processes), (
            "finished before it could be killed between chunks:\n" + "\n".join(path.read_text() for path in logs)
        )
        assert time.monotonic() < deadline, f"no pause between chunks within 120 s ({count} entries)"
        now, current = time.monotonic(), count_entries(cache)
        if current != count:
            count, since = current, now
        elif minimum <= count < SLOW_POINTS and now - since >= hold:
            return count
        time.sleep(0.005)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_killed_process_worker_loses_only_its_chunk_in_flight(
    slow_cache, slow_clean, tmp_path, repo_root, request, bench
):
    log = tmp_path / "driver.log"
    driver = start(
        [*SLOW, "--cache-dir", str(slow_cache), "--executor", "process", "--workers", "2"], log, request, repo_root
    )
    wait_between_chunks(slow_cache, driver, log)
    workers = [pid for pid in _children(driver.pid) if "spawn_main" in _cmdline(pid)]
    assert len(workers) == 2, [(pid, _cmdline(pid)) for pid in _children(driver.pid)]
    request.addfinalizer(lambda: [_kill_quietly(pid) for pid in workers])
    seen = {p.name for p in entry_files(only_loo_dir(slow_cache))}
    os.kill(workers[0], signal.SIGKILL)
    driver.wait(timeout=60)
    assert driver.returncode != 0, log.read_text()  # a missing shard is never reported as success

    directory = only_loo_dir(slow_cache)
    present = verified_payloads(directory)  # every entry on disk is whole
    assert seen <= {f"{i}.json" for i in present}  # nothing written before the kill was lost
    assert SLOW_CHUNK <= len(present) < SLOW_POINTS, len(present)

    result = bench(*SLOW, "--cache-dir", slow_cache)
    assert result.code == 0, result.err
    (line,) = gt_lines(result.out)
    assert line["cached"] == len(present)
    assert line["computed"] == SLOW_POINTS - len(present)
    final = verified_payloads(directory)
    assert {i: final[i] for i in present} == present
    assert_same_effects(final, slow_clean)


def _kill_quietly(pid: int) -> None:
    """Kill a pool worker this test started, if it is still there (and still that worker)."""
    if "spawn_main" not in _cmdline(pid):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- bench gt --status and --points ----------------------------------------------------------------------------------


def markdown_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_gt_status_lists_each_ground_truth_and_counts_corrupt_entries(bench, tiny, tmp_path):
    cache = tmp_path / "cache"
    empty = bench("gt", "--status", "--cache-dir", cache)
    assert empty.code == 0 and "no ground truth" in empty.out

    first = bench("gt", "--task", "iris", *tiny, "--points", "5", "--cache-dir", cache)
    assert first.code == 0, first.err
    second = bench(
        "gt",
        "--task",
        "iris",
        *tiny,
        "--points",
        "3",
        "--seed",
        "1",
        "--set",
        "iris.test_point=2",
        "--cache-dir",
        cache,
    )
    assert second.code == 0, second.err
    (a,), (b,) = gt_lines(first.out), gt_lines(second.out)
    assert b["test"] == 2

    def status() -> dict[str, dict[str, str]]:
        result = bench("gt", "--status", "--cache-dir", cache)
        assert result.code == 0, result.err
        return {row["directory"]: row for row in markdown_rows(result.out)}

    rows = status()
    dir_a, dir_b = Path(a["directory"]).name[:12], Path(b["directory"]).name[:12]
    assert set(rows) == {dir_a, dir_b}
    for directory, seed, test, entries in ((dir_a, 0, a["test"], 5), (dir_b, 1, 2, 3)):
        row = rows[directory]
        assert row["task"] == "iris v1"
        assert int(row["seed"]) == seed
        assert int(row["test point"]) == test
        assert int(row["entries"]) == entries
        assert int(row["corrupt"]) == 0
        assert "train_steps=300" in row["config"]
        assert row["re-training"].startswith("50 steps")
        assert row["reference"] == "True"

    victim = entry_files(Path(a["directory"]))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    rows = status()
    assert (int(rows[dir_a]["entries"]), int(rows[dir_a]["corrupt"])) == (4, 1)
    assert (int(rows[dir_b]["entries"]), int(rows[dir_b]["corrupt"])) == (3, 0)

    for path in entry_files(Path(b["directory"])):  # nothing readable left: still listed, all corrupt
        path.write_bytes(b"{")
    rows = status()
    assert rows[dir_b]["task"] == "?"
    assert (int(rows[dir_b]["entries"]), int(rows[dir_b]["corrupt"])) == (0, 3)


@pytest.mark.parametrize("points", ["0", "abc", "1.5", "-3", "al"])
def test_gt_rejects_a_bad_points_value(bench, tiny, tmp_path, points):
    result = bench("gt", "--task", "iris", *tiny, "--points", points, "--cache-dir", tmp_path / "cache")
    assert result.code == 2
    assert len(result.err_lines) >= 1
    assert result.err_lines[-1].startswith("bench: error:") and "--points" in result.err_lines[-1]
    assert "Traceback" not in result.err
    assert [line for line in result.err_lines if line.startswith("bench: error")] == result.err_lines[-1:]
    assert not (tmp_path / "cache" / "loo").exists()


def test_gt_rejects_a_bad_points_value_before_training(bench, tmp_path, monkeypatch):
    """A typo in --points is reported before minutes of training, as a malformed test point is."""
    import benchmark.numerics.training

    trainings = []
    monkeypatch.setattr(
        benchmark.numerics.training, "train", lambda *a, **k: trainings.append(1) or pytest.fail("trained first")
    )
    result = bench("gt", "--task", "iris", "--no-progress", "--points", "al", "--cache-dir", tmp_path / "cache")
    assert result.code == 2
    assert result.err_lines == ["bench: error: bad --points 'al': expected all, random or a positive number"]
    assert trainings == []
    assert not (tmp_path / "cache" / "optima").exists()


# -- scoring ----------------------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_estimate_and_widens_with_noise():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 30)
    clean = x + rng.normal(0, 0.02, size=(3, 30))
    noisy = x + rng.normal(0, 0.5, size=(3, 30))
    widths = {}
    for name, retrained in (("clean", clean), ("noisy", noisy)):
        for method in ("pearson", "spearman"):
            value = correlation(method, x, retrained.mean(axis=0))["value"]
            interval = bootstrap_interval(method, x, retrained)
            assert isinstance(interval, list) and len(interval) == 2
            low, high = interval
            assert -1 <= low <= value <= high <= 1, (name, method, interval, value)
            widths[name, method] = high - low
            assert bootstrap_interval(method, x, retrained) == interval  # seeded: reproducible
    for method in ("pearson", "spearman"):
        assert widths["noisy", method] > 3 * widths["clean", method], widths
        assert widths["clean", method] < 0.05
    one_seed = bootstrap_interval("spearman", x, clean[0])  # a 1-d ground truth is one seed
    assert one_seed is not None and one_seed[0] <= correlation("spearman", x, clean[0])["value"] <= one_seed[1]


def test_bootstrap_interval_is_none_when_undefined():
    assert bootstrap_interval("pearson", [1.0, 2.0], np.array([[1.0, 3.0]])) is None
    assert bootstrap_interval("spearman", [], np.zeros((2, 0))) is None
    constant = np.ones((2, 10))
    assert bootstrap_interval("pearson", np.arange(10.0), constant) is None  # every resample is degenerate


def test_repeat_ceiling_follows_spearman_brown():
    one = repeat_ceiling("spearman", np.arange(10.0)[None, :])
    assert one["value"] is None and "seed" in one["undefined"]
    assert repeat_ceiling("pearson", np.arange(10.0))["value"] is None  # 1-d: one seed

    identical = np.tile(np.linspace(-1, 2, 12) ** 3, (3, 1))
    for method in ("pearson", "spearman"):
        ceiling = repeat_ceiling(method, identical)
        assert ceiling["value"] == pytest.approx(1.0, abs=1e-12)
        assert ceiling["agreement"] == pytest.approx(1.0, abs=1e-12)
        assert ceiling["seeds"] == 3 and ceiling["n"] == 12

    rng = np.random.default_rng(0)
    signal_ = rng.normal(size=40)
    noisy = signal_ + rng.normal(0, 0.8, size=(3, 40))
    functions = {"pearson": stats.pearsonr, "spearman": stats.spearmanr}
    for method, function in functions.items():
        r = np.mean([function(noisy[a], noisy[b])[0] for a in range(3) for b in range(a + 1, 3)])
        assert 0 < r < 1
        expected = math.sqrt(3 * r / (1 + 2 * r))
        ceiling = repeat_ceiling(method, noisy)
        assert ceiling["agreement"] == pytest.approx(r, rel=1e-9)
        assert ceiling["value"] == pytest.approx(expected, rel=1e-9)
        assert ceiling["value"] < 1
        assert ceiling["value"] > r  # averaging seeds makes the ground truth more reliable than one repeat

    unrelated = rng.normal(size=(2, 40))
    unrelated[1] = -unrelated[0]  # perfectly anti-correlated repeats: no reliability at all
    assert repeat_ceiling("pearson", unrelated)["value"] == 0.0
    constant = repeat_ceiling("pearson", np.ones((2, 5)))
    assert constant["value"] is None and "constant" in constant["undefined"]


def test_full_batch_gt_seeds_share_entries_and_reach_the_ceiling(bench, tiny, tmp_path, read_records):
    run = (
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "random",
        *tiny,
        "--no-leaderboard",
        "--cache-dir",
        tmp_path / "cache",
    )
    result = bench(*run, "--gt-seeds", "2", "--results-dir", tmp_path / "two")
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path / "two")
    gt = record["ground_truth"]
    points = gt["points"]
    assert points == 20 and gt["seeds"] == 2
    assert gt["computed"] == points  # the second seed's re-training is the first's: its entries are shared
    assert gt["cached"] == points
    assert gt["cache_key"]["recipe"]["seed"] is None
    assert len(gt["reference_drift_per_seed"]) == 2
    assert gt["reference_drift_per_seed"][0] == gt["reference_drift_per_seed"][1]

    per_seed = record["points"]["retrained_per_seed"]
    assert len(per_seed) == 2 and per_seed[0] == per_seed[1] == record["points"]["retrained"]
    metrics = record["metrics"]
    for method in ("spearman", "pearson"):
        ceiling = metrics["ceiling"][method]
        assert ceiling["value"] == pytest.approx(1.0, abs=1e-12)
        assert ceiling["seeds"] == 2 and ceiling["n"] == points
        interval = metrics[method]["interval"]
        assert isinstance(interval, list) and len(interval) == 2
        assert interval[0] <= metrics[method]["value"] <= interval[1]

    single = bench(*run, "--results-dir", tmp_path / "one")
    assert single.code == 0, single.err
    (one,) = read_records(tmp_path / "one")
    assert one["ground_truth"]["computed"] == 0 and one["ground_truth"]["cached"] == points
    assert one["points"]["retrained"] == record["points"]["retrained"]
    assert one["metrics"]["ceiling"]["spearman"]["value"] is None
    assert "seed" in one["metrics"]["ceiling"]["spearman"]["undefined"]


@pytest.mark.parametrize("owner_writes", [True, False])
def test_compute_claimed_works_past_entries_another_process_holds(tmp_path: Path, owner_writes: bool) -> None:
    """Claiming a chunk at a time: the entries another holder has locked are skipped while the rest is computed in
    chunks, then waited for, and computed here only if their holder released them unwritten (it died)."""
    import threading

    from filelock import FileLock

    written: set[int] = set()
    chunks: list[list[int]] = []
    done_elsewhere: list[int] = []

    def lock_of(i: int) -> FileLock:
        return FileLock(tmp_path / f".{i}.lock")

    def compute(chunk: list[int]) -> int:
        chunks.append(chunk)
        written.update(chunk)
        return len(chunk)

    held = threading.Event()

    def owner() -> None:  # another holder of entry 2: it finishes (or dies) once everything else is computed
        other = lock_of(2)
        other.acquire()
        held.set()
        while len(written) < 5:
            time.sleep(0.01)
        if owner_writes:
            written.add(2)
        other.release()

    thread = threading.Thread(target=owner)
    thread.start()
    assert held.wait(timeout=10)
    computed = groundtruth.compute_claimed(
        range(6), lock_of, lambda i: i not in written, compute, lambda n: 2, done_elsewhere.append
    )
    thread.join(timeout=10)
    assert chunks[:3] == [[0, 1], [3, 4], [5]]  # past the held entry, without waiting for it
    if owner_writes:
        assert computed == 5 and len(chunks) == 3 and done_elsewhere == [1]
    else:
        assert computed == 6 and chunks[3] == [2] and done_elsewhere == []
    assert written == set(range(6))
