"""The peer-library adapters (``benchmark.peers.adapters``) as plugins, without the peer libraries: they register with
``-p``, importing them imports no peer, and a missing peer is that estimator's recorded failure naming the package and
the install command while the run goes on.

Their numbers against the harness's own estimators need the peers installed, which this environment must not have
(``benchmark/peers/README.md``): ``peer_tests/``, run in the peers' own environment.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmark import Protocol, Recipe

PLUGIN = "benchmark.peers.adapters"
PEERS = {
    "dattri-explicit": "dattri",
    "dattri-cg": "dattri",
    "dattri-lissa": "dattri",
    "dattri-tracin": "dattri",
    "dattri-trak": "dattri",
    "kronfluence-kfac": "kronfluence",
    "kronfluence-ekfac": "kronfluence",
    "captum-tracin": "captum",
}
"""Every adapter and the distribution it runs."""


def listed(output: str) -> dict[str, str]:
    """``bench list`` output -> {name: plugin}."""
    out = {}
    for line in output.splitlines():
        if line.startswith("  ") and "[" in line:
            name, rest = line.split(None, 1)
            out[name] = rest[1 : rest.index("]")]
    return out


def test_importing_the_adapters_imports_no_peer(repo_root):
    code = (
        "import json, sys\n"
        f"import {PLUGIN}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('dattri', 'kronfluence', 'captum'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_adapters_register_with_dash_p_and_only_then(bench):
    result = bench("list", "-p", PLUGIN)
    assert result.code == 0, result.err
    names = listed(result.out)
    assert {name: names.get(name) for name in PEERS} == dict.fromkeys(PEERS, PLUGIN)
    assert not set(PEERS) & set(listed(bench("list").out))


def test_contract_and_protocol_damping():
    from benchmark.peers.adapters import ESTIMATORS

    assert sorted(cls.name for cls in ESTIMATORS) == sorted(PEERS)
    protocol = Protocol("max-loss", 10, Recipe(steps=1, lr=0.1), damping=0.01)
    for cls in ESTIMATORS:
        assert cls.contract_problems() == [], cls.name
        # the influence-function adapters take the task's protocol damping; the others have none
        expected = (
            {"damping": 0.01} if cls.name.split("-", 1)[1] in ("explicit", "cg", "lissa", "kfac", "ekfac") else {}
        )
        assert cls.protocol_options(protocol) == expected, cls.name
        assert (cls.no_ihvp is None) == (cls.name.split("-", 1)[0] == "dattri" and bool(expected)), cls.name


def test_a_missing_peer_is_a_recorded_failure_naming_the_install(bench, tiny, tmp_path, read_records, monkeypatch):
    for peer in set(PEERS.values()):  # not installed here anyway; blocked so the test means the same everywhere
        monkeypatch.setitem(sys.modules, peer, None)
    results = tmp_path / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "-p",
        PLUGIN,
        "--estimator",
        ",".join(["exact", *PEERS]),
        *tiny,
        "--selection",
        "random",
        "--no-leaderboard",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    records = {record["estimator"]["name"]: record for record in read_records(results)}
    assert set(records) == {"exact", *PEERS}
    assert records["exact"]["status"] == "ok", records["exact"]["failure"]
    for name, peer in PEERS.items():
        record = records[name]
        assert record["status"] == "failed", name
        assert record["estimator"]["plugin"] == PLUGIN
        failure = record["failure"]
        assert "\n" not in failure
        assert f"{name} needs the peer library {peer}" in failure, failure
        assert "pip install -e '.[peers]'" in failure and "benchmark/peers/README.md" in failure, failure
    assert all(sys.modules[peer] is None for peer in set(PEERS.values()))


def test_a_bad_option_is_a_one_line_usage_error(bench):
    result = bench("run", "--task", "iris", "-p", PLUGIN, "--estimator", "dattri-cg", "--set", "dattri-cg.max_iter=0")
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert "max_iter must be > 0" in result.err
