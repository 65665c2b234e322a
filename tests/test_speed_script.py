"""The pure parts of ``scripts/speed_vs_peers.py``: sign alignment, correlations, sweep logic and the report."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def speed():
    path = REPO_ROOT / "scripts" / "speed_vs_peers.py"
    spec = importlib.util.spec_from_file_location("speed_vs_peers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_vs_peers"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("speed_vs_peers", None)


def peer_scores(m: int = 3, n: int = 7, p: int = 5) -> dict[str, torch.Tensor]:
    """Each tool's raw output for the same ``(H + lambda I)^-1`` and gradients, written from its documented formula."""
    generator = torch.Generator().manual_seed(0)
    g_test = torch.randn(m, p, generator=generator, dtype=torch.float64)
    g_train = torch.randn(n, p, generator=generator, dtype=torch.float64)
    root = torch.randn(p, p, generator=generator, dtype=torch.float64)
    inverse = torch.linalg.inv(root @ root.T + 0.1 * torch.eye(p, dtype=torch.float64))
    return {
        "ours": g_test @ inverse @ g_train.T / n,  # Estimator.influence: [m, n], +(1/n) g_test^T H^-1 g_i
        "dattri": g_train @ inverse @ g_test.T,  # attribute: [n, m], g_i^T H^-1 g_test
        "pydvl": (inverse @ g_test.T).T @ g_train.T,  # influences(mode=up): [m, n], <H^-1 g_test, g_i>
    }


def test_align_maps_every_tool_onto_our_convention(speed):
    raw = peer_scores()
    n = raw["ours"].shape[1]
    for tool in speed.TOOLS:
        aligned = speed.align(tool, raw[tool], n)
        assert aligned.shape == raw["ours"].shape, tool
        torch.testing.assert_close(aligned, raw["ours"], rtol=1e-12, atol=1e-14, msg=tool)
    # a sign or scale slip would be caught: the unaligned peers differ from ours
    assert not torch.allclose(raw["pydvl"], raw["ours"])
    assert not torch.allclose(speed.align("ours", raw["dattri"].T, n), raw["ours"])


def test_align_rejects_an_unknown_tool(speed):
    with pytest.raises(ValueError, match="unknown tool 'captum'; choose from ours, dattri, pydvl"):
        speed.align("captum", torch.zeros(1, 1), 1)


def test_pearson_rows_matches_numpy(speed):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(4, 50, generator=generator, dtype=torch.float64)
    b = a + 0.5 * torch.randn(4, 50, generator=generator, dtype=torch.float64)
    b[2] = -b[2]
    expected = [np.corrcoef(a[i].numpy(), b[i].numpy())[0, 1] for i in range(4)]
    np.testing.assert_allclose(speed.pearson_rows(a, b).numpy(), expected, rtol=1e-12)
    assert speed.worst(speed.pearson_rows(a, b)) == pytest.approx(min(expected))
    assert np.isnan(speed.worst(torch.tensor([0.9, float("nan")])))


def outcome(speed, setting: int, r: float | None, status: str = "ok", seconds: float = 1.0):
    job = speed.Job("iris", "dattri", "cg", setting)
    result = speed.Outcome(job, status, seconds=seconds if status == "ok" else None, peak_mib=100.0, base_mib=50.0)
    if r is not None:
        result.correlation = torch.tensor([r, 1.0], dtype=torch.float64)
        result.agreement = torch.tensor([r], dtype=torch.float64)
    return result


def test_first_reaching_takes_the_first_setting_at_the_threshold(speed):
    sweep = [outcome(speed, 10, 0.5), outcome(speed, 25, 0.995, seconds=3.0), outcome(speed, 50, 0.999)]
    assert speed.first_reaching(sweep).job.setting == 25
    assert speed.first_reaching(sweep[:1]) is None
    assert speed.first_reaching([outcome(speed, 10, None, status="timeout")]) is None


def test_sweep_stops_at_the_threshold_and_at_a_failure(speed):
    calls = []

    def run(job):
        calls.append(job.setting)
        return {10: outcome(speed, 10, 0.3), 25: outcome(speed, 25, None, status="timeout"),
                50: outcome(speed, 50, 0.999)}[job.setting]

    jobs = [speed.Job("iris", "dattri", "cg", k) for k in (10, 25, 50)]
    assert [o.status for o in speed.sweep(jobs, run, lambda o: None)] == ["ok", "timeout"]
    assert calls == [10, 25]
    calls.clear()

    def fast(job):
        calls.append(job.setting)
        return outcome(speed, job.setting, 0.999)

    assert len(speed.sweep(jobs, fast, lambda o: None)) == 1 and calls == [10]


def test_render_has_the_banner_and_reports_unreached_sweeps(speed):
    reference = speed.Outcome(speed.Job("iris", "ours", "exact"), "ok", 0.5, 80.0, 50.0,
                              diagnostics={"top_eigenvalue": 1.9})
    reference.correlation = torch.ones(2, dtype=torch.float64)
    sweeps = {
        ("ours", "cg"): [outcome(speed, 10, 0.999, seconds=0.25)],
        ("dattri", "cg"): [outcome(speed, 10, 0.4), outcome(speed, 25, None, status="timeout")],
    }
    sweeps[("ours", "cg")][0].job = speed.Job("iris", "ours", "cg", 10)
    meta = {"command": "python scripts/speed_vs_peers.py --models iris", "device": "CPU", "load": "1.0",
            "versions": "torch x", "commit": "abc", "date": "2026-01-01"}
    text = speed.render(meta, {"iris": {"reference": reference, "sweeps": sweeps, "summary": "Summary here."}})
    assert "generated by `python scripts/speed_vs_peers.py`, do not edit" in text
    assert "| ours | cg | 10 it | 0.25 | 100 | 0.9990 |" in text
    assert "| dattri | IFAttributorCG | not reached (best r 0.4000; stopped: timeout) |" in text
    assert "| dattri | IFAttributorCG | 25 it | timeout |" in text
    assert "Summary here." in text and "commit: abc".lower() in text.lower()


def test_int_list_parses_and_rejects(speed):
    assert speed.int_list("10, 25,50") == (10, 25, 50)
    for bad in ("ten", "0,5", ""):
        with pytest.raises(Exception, match="expected"):
            speed.int_list(bad)


def test_measure_reuses_a_finished_measurement_and_reruns_nothing(speed, tmp_path, monkeypatch):
    """An interrupted comparison resumes: a job whose outcome is in the work directory is not run again."""
    job = speed.Job("iris", "ours", "cg", 5)
    runs = []

    def fake(job_, timeout, scores_path, label):
        runs.append(job_)
        torch.save({"scores": torch.ones(2, 3)}, scores_path)
        return speed.Outcome(job_, "ok", 1.5, 10.0, 5.0, torch.ones(2, 3), {"iterations": 5}, commit="abc", load=1.1)

    monkeypatch.setattr(speed, "_measure", fake)
    first = speed.measure(job, 60, tmp_path)
    again = speed.measure(job, 60, tmp_path)
    assert len(runs) == 1
    assert (again.status, again.seconds, again.diagnostics, again.commit, again.load) == (
        "ok", 1.5, {"iterations": 5}, "abc", 1.1)
    torch.testing.assert_close(again.scores, first.scores)
    speed.measure(speed.Job("iris", "ours", "cg", 10), 60, tmp_path)  # another setting is another measurement
    assert len(runs) == 2


def test_our_measurements_are_redone_when_our_sources_change_and_the_peers_are_not(speed, tmp_path, monkeypatch):
    runs = []

    def fake(job_, timeout, scores_path, label):
        runs.append(job_)
        torch.save({"scores": torch.ones(2, 3)}, scores_path)
        return speed.Outcome(job_, "ok", 1.5, 10.0, 5.0, torch.ones(2, 3), {}, commit="abc")

    monkeypatch.setattr(speed, "_measure", fake)
    ours, peer = speed.Job("lenet", "ours", "bcg", 5), speed.Job("lenet", "pydvl", "cg", 10)
    for code in ("before", "before", "after"):
        monkeypatch.setattr(speed, "our_code", lambda code=code: code)
        speed.measure(ours, 60, tmp_path)
        speed.measure(peer, 60, tmp_path)
    assert [(job.tool, job.code) for job in runs] == [("ours", "before"), ("pydvl", ""), ("ours", "after")]
    # a peer's job keeps the name it had before jobs had a code (pinned), so its earlier measurements stay valid
    assert speed.job_digest(peer) == "265c55e56206410681cf"
    assert speed.job_digest(ours) != speed.job_digest(dataclasses.replace(ours, code="x"))


def test_reference_caveat_says_why_a_reference_did_not_converge(speed):
    job = speed.Job("lenet", "ours", "bcg", 100, tol=1e-6)
    converged = speed.Outcome(job, "ok", diagnostics={"converged": True, "iterations": 20})
    capped = speed.Outcome(job, "ok", diagnostics={"converged": False, "iterations": 100})
    floor = speed.Outcome(job, "ok", diagnostics={"converged": False, "iterations": 21, "relative_residual": 1.3e-5})
    assert speed.reference_caveat(converged) == ""
    assert "iteration cap ran out" in speed.reference_caveat(capped)
    assert "1.3e-05" in speed.reference_caveat(floor) and "cap" not in speed.reference_caveat(floor)
    assert "reached the tolerance" in speed.reference_caveat(floor)
    stalled = speed.Outcome(job, "ok", diagnostics={"converged": False, "iterations": 23, "stalled": True,
                                                    "relative_residual": 3.3e-5})
    assert "precision floor" in speed.reference_caveat(stalled)
    assert "reached the tolerance" not in speed.reference_caveat(stalled)


def test_method_list_parses_and_rejects(speed):
    import argparse

    assert speed.method_list("cg, lissa") == ("cg", "lissa")
    for bad in ("", "newton", "cg,exact"):
        with pytest.raises(argparse.ArgumentTypeError, match="choose from cg, lissa"):
            speed.method_list(bad)


def test_dense_cross_check_uses_a_cached_hessian_and_never_builds_one(speed):
    """Without a cached dense Hessian the report says so (and nothing is built); with one, the reference is compared
    with our exact solve on it."""
    from benchmark.cache import Cache
    from estimators.exact import Exact, ExactConfig

    spec = dataclasses.replace(speed.MODELS["iris"], cached_hessian="float64")
    _, problem = speed.build_problem(spec, None)
    test = speed.test_points(problem)
    reference = speed.Outcome(speed.Job("iris", "ours", "bcg", 100, tol=1e-6), "ok",
                              scores=torch.randn(len(test), problem.n_train, dtype=torch.float64))
    assert "Not cross-checked" in speed.dense_cross_check(spec, None, reference)
    assert not (Cache().root / "hessians").exists()

    exact = Exact(ExactConfig(damping=speed.DAMPING))
    exact.prepare(problem)  # a Table 1 exact run: leaves the Hessian in the cache
    assert (Cache().root / "hessians").exists()
    reference.scores = exact.influence(test)
    assert "worst r is 1.000000" in speed.dense_cross_check(spec, None, reference)
    reference.scores = -reference.scores
    assert "worst r is -1.000000" in speed.dense_cross_check(spec, None, reference)


def test_summary_names_our_fastest_answer_within_the_peers_memory(speed):
    def hit(tool, method, seconds, peak):
        outcome = speed.Outcome(speed.Job("small-cnn", tool, method, 5), "ok", seconds, peak)
        outcome.correlation = torch.tensor([0.995])
        return [outcome]

    sweeps = {("ours", "bcg"): hit("ours", "bcg", 150.0, 1800.0), ("ours", "pcg"): hit("ours", "pcg", 130.0, 3300.0),
              ("pydvl", "cg"): hit("pydvl", "cg", 728.0, 2200.0)}
    summary = speed.summarise(speed.MODELS["small-cnn"], sweeps)
    assert "cg (block, nystrom) (5 it) in 130 s" in summary and "5.6x faster at 1.50x its peak memory" in summary
    assert "At no more peak memory than that peer, ours is fastest with cg (block) (5 it): 150 s" in summary
    assert "4.9x faster" in summary
    sweeps.pop(("ours", "bcg"))
    assert "No setting of ours reaches 0.99 within that peer's peak memory" in speed.summarise(
        speed.MODELS["small-cnn"], sweeps)


def test_pydvl_cg_variants_and_their_comparison_with_ours_from_the_same_start(speed, monkeypatch):
    """On the MNIST models pyDVL's CG runs with the whole set as one batch and in batches of equal size (its
    average over batches weighs each batch alike), and its block CG in batches; Iris (one batch either way) and dattri
    (whose CG sums per-batch iHVPs) run whole. A batched job has its own name and digest; an unbatched one keeps its
    pinned digest. Each peer CG's agreement is with ours started like it (``t0 = v``), not with ours from zero."""
    jobs = []

    def fake(job, timeout, workdir):
        jobs.append(job)
        scores = torch.ones(2, 5500, dtype=torch.float64) + torch.arange(5500.0, dtype=torch.float64)
        if job.tool == "ours" and job.method in ("cg", "bcg"):  # from zero: anti-correlated with the peers here
            scores = -scores
        return speed.Outcome(job, "ok", 1.0, 10.0, 5.0, scores, {"scale": 2.0}, commit="abc")

    monkeypatch.setattr(speed, "measure", fake)
    monkeypatch.setattr(speed, "dense_cross_check", lambda spec, data_dir, reference: "")
    args = speed.argparse.Namespace(timeout=1.0, data_dir=None, reference_max_iter=5, cg_iterations=[10],
                                    lissa_depths=[100], methods=("cg", "lissa"))
    for label, expected in (("lenet", {("cg", 0), ("cg", 250), ("bcg", 250),
                                       ("lissa", 0)}), ("iris", {("exact", 0), ("cg", 0), ("bcg", 0), ("lissa", 0)})):
        jobs.clear()
        result = speed.benchmark_model(speed.MODELS[label], args, None)
        assert {(job.method, job.batch) for job in jobs if job.tool == "pydvl"} == expected
        assert all(job.batch == 0 for job in jobs if job.tool != "pydvl")
        assert {job.method for job in jobs if job.tool == "dattri"} == {"cg", "lissa"} | (
            {"exact"} if label == "iris" else set())
        names = [sweep[0].job.name for (tool, _), sweep in result["sweeps"].items() if tool == "pydvl"]
        assert len(names) == len(set(names)) == len(expected)
        # the peers' CG is compared with ours started like theirs (t0 = v), which runs before it
        assert {job.method for job in jobs if job.tool == "ours"} >= {"cg", "rcg", "bcg", "rbcg"}
        peer_cg = [o for (tool, _), sweep in result["sweeps"].items() if tool != "ours" for o in sweep
                   if o.job.method in ("cg", "bcg")]
        assert peer_cg and all(speed.worst(o.agreement) == pytest.approx(1.0) for o in peer_cg)
    batched = speed.Job("lenet", "pydvl", "cg", 10, batch=256)
    assert batched.name == "CgInfluence, batches of 256"
    assert speed.Job("lenet", "pydvl", "bcg", 5, batch=256).name == "CgInfluence (block), batches of 256"
    assert speed.job_digest(speed.Job("lenet", "pydvl", "cg", 10)) == "265c55e56206410681cf"
    assert speed.job_digest(batched) != "265c55e56206410681cf"


def test_pydvl_batch_divides_the_training_set(speed):
    """pyDVL weighs each batch's product alike, so its batches must all be of one size: the largest divisor of ``n``
    up to ``PYDVL_BATCH``."""
    assert speed.pydvl_batch(5500) == 250
    assert speed.pydvl_batch(1024) == speed.PYDVL_BATCH == 256
    assert speed.pydvl_batch(150) == 150
    assert all(n % speed.pydvl_batch(n) == 0 and speed.pydvl_batch(n) <= speed.PYDVL_BATCH for n in range(1, 2000))


def test_rounding_check_reruns_a_disagreeing_peer_cg_and_ours_in_float64(speed, monkeypatch):
    """A peer CG setting below 0.99 with ours from the same start is rerun by both in float64, once per sweep; the
    report shows both agreements. Settings that agree are not rerun."""
    jobs = []
    base = torch.stack([torch.arange(5500.0), torch.arange(5500.0).flip(0)]).to(torch.float64)

    def fake(job, timeout, workdir):
        jobs.append(job)
        scores = base.clone()
        if job.tool == "pydvl" and job.method == "cg" and not job.batch and job.dtype != "float64":
            scores += 3000.0 * torch.sin(torch.arange(5500.0, dtype=torch.float64))  # float32 rounding, say
        return speed.Outcome(job, "ok", 1.0, 10.0, 5.0, scores, {"scale": 2.0}, commit="abc")

    monkeypatch.setattr(speed, "measure", fake)
    monkeypatch.setattr(speed, "dense_cross_check", lambda spec, data_dir, reference: "")
    args = speed.argparse.Namespace(timeout=1.0, data_dir=None, reference_max_iter=5, cg_iterations=[10],
                                    lissa_depths=[100], methods=("cg", "lissa"))
    result = speed.benchmark_model(speed.MODELS["lenet"], args, None)
    assert [(j.tool, j.method, j.setting, j.batch) for j in jobs if j.dtype == "float64"] == [
        ("ours", "rcg", 10, 0), ("pydvl", "cg", 10, 0)]
    [(below, ours, peer)] = result["rounding"]
    assert speed.worst(below.agreement) < 0.99 and speed.worst(peer.agreement) == pytest.approx(1.0)
    assert peer.job.name == "CgInfluence, float64"
    assert speed.job_digest(peer.job) != speed.job_digest(below.job)
    report = speed.render({"command": "c", "device": "d", "load": "1", "versions": "v", "commit": "abc",
                           "date": "today"}, {"lenet": result})
    section = report.split("### CG agreement in float64")[1]
    assert f"| pydvl | CgInfluence | 10 it | {speed.worst(below.agreement):.4f} | 1.0000 |" in section


def test_our_code_digest_ignores_docstrings_and_comments_but_not_code(speed, tmp_path):
    module = tmp_path / "benchmark" / "m.py"
    module.parent.mkdir()

    def digest(source: str) -> str:
        module.write_text(source)
        return speed.our_code(tmp_path)

    base = digest('"""Module."""\n\ndef f(x):\n    """Twice x."""\n    return 2 * x\n')
    assert digest('"""Module, reworded."""\n\ndef f(x):\n    """Doubles x."""\n    # why\n    return 2 * x\n') == base
    assert digest('def f(x):\n    return 2 * x\n') == base
    assert digest('def f(x):\n    return 2 * x\nLIMIT = 3\n"""An attribute docstring."""\n') == digest(
        'def f(x):\n    return 2 * x\nLIMIT = 3\n')
    assert digest('"""Module."""\n\ndef f(x):\n    """Twice x."""\n    return 3 * x\n') != base
    assert digest('"""Module."""\n\ndef g(x):\n    """Twice x."""\n    return 2 * x\n') != base
