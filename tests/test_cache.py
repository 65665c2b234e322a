"""The cache: resuming an interrupted ground truth, detecting corrupt entries, never unpickling."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.common.cache import Cache, digest
from benchmark.common.errors import CacheError
from tasks.iris import Iris

GT_POINTS = 20  # the random selection of the tiny Iris run: round(0.166 * 120)
RUN = (
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
"""A tiny run whose ground truth is 20 cache entries, each re-trained alone (so a recomputed entry is bit-identical)."""


def loo_entries(cache: Path) -> dict[str, bytes]:
    """The leave-one-out entries of the (single) ground-truth directory: file name -> bytes."""
    directories = list((cache / "loo").glob("*"))
    assert len(directories) <= 1, directories
    if not directories:
        return {}
    return {p.name: p.read_bytes() for p in directories[0].glob("*.json")}


def loo_dir(cache: Path) -> Path:
    (directory,) = (cache / "loo").glob("*")
    return directory


@pytest.fixture(scope="module")
def populated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the optimum, the reference and all 20 entries of :data:`RUN` (copy it before changing it)."""
    root = tmp_path_factory.mktemp("populated")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([*RUN, "--cache-dir", str(root / "cache"), "--results-dir", str(root / "board" / "results")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert len(loo_entries(root / "cache")) == GT_POINTS
    return root / "cache"


@pytest.fixture
def cache_copy(populated_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(populated_cache, target)
    return target


def rerun(bench, cache: Path, results: Path) -> dict:
    result = bench(*RUN, "--cache-dir", cache, "--results-dir", results)
    assert result.code == 0, result.err
    records = [json.loads(p.read_text()) for p in (results / "iris").glob("*.json")]
    assert len(records) == 1
    return records[0]


# -- resuming --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_interrupted_ground_truth_resumes(bench, tmp_path, repo_root, read_records, request):
    run = list(RUN)
    run[run.index("iris.retrain_steps=50")] = "iris.retrain_steps=400"  # ~0.1 s per entry: slow enough to interrupt
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(cache: Path, results: Path, log: str) -> subprocess.Popen:
        with (tmp_path / log).open("w") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "benchmark.cli", *run, "--cache-dir", str(cache), "--results-dir", str(results)],
                cwd=repo_root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        request.addfinalizer(lambda: (child.kill(), child.wait()) if child.poll() is None else None)
        return child

    # an uninterrupted run in another cache directory, on the other core meanwhile
    clean_cache = tmp_path / "clean-cache"
    clean = start(clean_cache, tmp_path / "clean", "clean.log")
    cache = tmp_path / "cache"
    process = start(cache, tmp_path / "killed", "killed.log")
    deadline = time.monotonic() + 120
    while len(loo_entries(cache)) < 3:
        assert process.poll() is None, "the run finished before it could be interrupted: raise retrain_steps"
        assert time.monotonic() < deadline, "no ground-truth entries after 120 s"
        time.sleep(0.02)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait(timeout=30)
    assert process.returncode == -9
    before = loo_entries(cache)
    assert 3 <= len(before) < GT_POINTS, len(before)
    assert not (tmp_path / "killed").exists()  # killed before any record was written

    resumed = bench(*run, "--cache-dir", cache, "--results-dir", tmp_path / "resumed")
    clean.wait(timeout=120)
    assert resumed.code == 0, resumed.err
    (record,) = read_records(tmp_path / "resumed")
    gt = record["ground_truth"]
    assert gt["points"] == GT_POINTS
    assert gt["cached"] == len(before)
    assert gt["computed"] == GT_POINTS - len(before)
    assert gt["corrupt_recomputed"] == 0
    after = loo_entries(cache)
    assert len(after) == GT_POINTS
    assert {name: after[name] for name in before} == before  # finished entries are reused, not rewritten

    assert clean.returncode == 0, (tmp_path / "clean.log").read_text()
    (clean_record,) = read_records(tmp_path / "clean")
    assert clean_record["ground_truth"]["computed"] == GT_POINTS
    assert loo_entries(clean_cache) == after  # same keys, same values, byte for byte
    assert clean_record["points"] == record["points"]


# -- corrupt entries -------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tamper(path: Path) -> None:
    entry = json.loads(path.read_text())
    entry["payload"]["loss_change"] += 1e-3  # valid JSON, stale checksum
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("damage", [_truncate, _tamper], ids=["truncated", "tampered"])
def test_corrupt_entry_is_recomputed(bench, cache_copy, tmp_path, damage):
    original = loo_entries(cache_copy)
    victim = sorted(original)[3]
    damage(loo_dir(cache_copy) / victim)
    assert (loo_dir(cache_copy) / victim).read_bytes() != original[victim]

    record = rerun(bench, cache_copy, tmp_path / "results")
    gt = record["ground_truth"]
    assert gt["corrupt_recomputed"] == 1
    assert gt["computed"] == 1
    assert gt["cached"] == GT_POINTS - 1
    assert loo_entries(cache_copy) == original  # recomputed to the same value, and stored again
    index = int(victim.removesuffix(".json"))
    position = record["points"]["train_indices"].index(index)
    stored = json.loads(original[victim])["payload"]["loss_change"]
    assert record["points"]["retrained"][position] == stored


def test_intact_entry_filed_under_another_index_is_reported_and_recomputed(bench, cache_copy, tmp_path):
    original = loo_entries(cache_copy)
    names = sorted(original)
    directory = loo_dir(cache_copy)
    shutil.copyfile(directory / names[0], directory / names[1])  # intact JSON, checksum fine, key of another point

    status = bench("gt", "--status", "--cache-dir", cache_copy)
    assert status.code == 0, status.err
    (row,) = [line for line in status.out.splitlines() if line.startswith("| " + directory.name[:12])]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header = [cell.strip() for cell in status.out.splitlines()[1].strip("|").split("|")]
    assert (int(cells[header.index("entries")]), int(cells[header.index("corrupt")])) == (GT_POINTS - 1, 1)

    result = bench(*RUN, "--cache-dir", cache_copy, "--results-dir", tmp_path / "results")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert any(names[1] in line and "recomputing" in line for line in result.err_lines), result.err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "iris").glob("*.json")]
    assert record["ground_truth"]["corrupt_recomputed"] == 1
    assert record["ground_truth"]["computed"] == 1
    assert loo_entries(cache_copy) == original  # recomputed to the same value, filed under its own index


def count_optimum_trainings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets a 1 each time an Iris optimum is trained (Iris trains with its own descent, not
    ``benchmark.numerics.training.train``; leave-one-out re-training through the same method is not counted)."""
    trainings: list[int] = []
    real_descend = Iris.descend

    def descend(self, *args, **kwargs):
        if kwargs.get("description", args[5] if len(args) > 5 else None) == "training optimum":
            trainings.append(1)
        return real_descend(self, *args, **kwargs)

    monkeypatch.setattr(Iris, "descend", descend)
    return trainings


def test_corrupt_optimum_is_retrained_not_loaded(bench, cache_copy, tmp_path, monkeypatch):
    (blob,) = (cache_copy / "optima").glob("*.pt")
    original = blob.read_bytes()
    damaged = bytearray(original)
    middle = len(damaged) // 2
    damaged[middle : middle + 8] = bytes(b ^ 0xFF for b in damaged[middle : middle + 8])
    blob.write_bytes(bytes(damaged))

    trainings, loaded = count_optimum_trainings(monkeypatch), []
    real_load = torch.load

    def load(f, *args, **kwargs):
        data = f.getvalue() if isinstance(f, io.BytesIO) else Path(f).read_bytes()
        loaded.append(data)
        return real_load(io.BytesIO(data), *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    record = rerun(bench, cache_copy, tmp_path / "results")
    assert trainings == [1]
    assert bytes(damaged) not in loaded
    assert blob.read_bytes() == original  # retrained (deterministically) and stored again
    assert record["ground_truth"]["cached"] == GT_POINTS  # same problem key: the ground truth is still valid
    assert record["status"] == "ok"


def test_intact_cache_loads_without_training(bench, cache_copy, tmp_path, monkeypatch):
    trainings, calls = count_optimum_trainings(monkeypatch), []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    record = rerun(bench, cache_copy, tmp_path / "results")
    assert trainings == []
    assert record["ground_truth"]["computed"] == 0 and record["ground_truth"]["cached"] == GT_POINTS
    assert len(calls) >= 2  # the optimum and the ground-truth reference
    assert all(call.get("weights_only") is True for call in calls), calls


# -- the Cache class -------------------------------------------------------------------------------------------------


def test_read_json_refuses_an_intact_entry_of_another_key(tmp_path):
    cache = Cache(tmp_path)
    path = tmp_path / "loo" / "entry.json"
    key = {"task": "iris", "removed": 3}
    cache.write_json(path, key, {"loss_change": 0.25})
    assert cache.read_json(path, dict(key)) == {"loss_change": 0.25}
    with pytest.raises(CacheError, match="another request"):
        cache.read_json(path, {"task": "iris", "removed": 4})
    assert cache.read_json(tmp_path / "loo" / "absent.json", key) is None


def test_read_json_treats_damage_as_a_miss(tmp_path):
    cache = Cache(tmp_path)
    path = tmp_path / "entry.json"
    key = {"removed": 1}
    for damaged in (b"", b"{", b"\xff\xfe not utf-8", b"[1, 2]", b'{"key": {"removed": 1}}'):
        path.write_bytes(damaged)
        assert cache.read_json(path, key) is None, damaged


class _Payload:
    """Unpickling this creates ``marker``: the proof that a loader executed code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_cached_tensors_are_never_unpickled(tmp_path):
    cache = Cache(tmp_path / "cache")
    key = {"task": "evil"}
    stem = cache.root / "optima" / digest(key)
    marker = tmp_path / "executed"
    buffer = io.BytesIO()
    torch.save({"theta": _Payload(marker)}, buffer)
    blob = buffer.getvalue()
    stem.parent.mkdir(parents=True)
    stem.with_suffix(".pt").write_bytes(blob)
    import hashlib

    cache.write_json(stem.with_suffix(".json"), key, {"blob_sha256": hashlib.sha256(blob).hexdigest()})

    computed = []

    def compute():
        computed.append(1)
        return {"theta": torch.arange(3.0)}

    try:
        result = cache.tensors("optima", key, compute)
    except Exception:  # refusing the file is fine; running it is not
        result = None
    assert not marker.exists(), "the cache executed code while loading a tensor file"
    if result is not None:
        assert computed == [1] and torch.equal(result["theta"], torch.arange(3.0))

    # the file is live: a pickle-based load would have run it
    control = tmp_path / "control"
    buffer = io.BytesIO()
    torch.save({"theta": _Payload(control)}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert control.exists()


def test_tensors_round_trip(tmp_path):
    cache = Cache(tmp_path)
    key = {"task": "iris", "seed": 0}
    calls = []

    def compute():
        calls.append(1)
        return {"theta": torch.linspace(0, 1, 7, dtype=torch.float64)}

    first = cache.tensors("optima", key, compute)
    second = cache.tensors("optima", key, compute)
    assert calls == [1]
    assert second["theta"].dtype == torch.float64 and torch.equal(first["theta"], second["theta"])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files
