"""The ``mnist`` and ``cifar`` tasks end to end: the smoke preset, real loaders on generated files, missing data."""

from __future__ import annotations

import dataclasses

import pytest

from tasks.vision import PRESETS, TABLE1, Cifar, CifarConfig, Mnist, VisionConfig
from tests.test_datasets import make_mnist

SMOKE = ("--estimator", "lissa,first-order", "--set", "lissa.depth=50", "--no-progress", "--no-leaderboard")


@pytest.mark.parametrize("task", ["mnist", "cifar"])
def test_smoke_preset_runs_end_to_end(bench, tmp_path, read_records, task):
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        task,
        "--set",
        f"{task}.preset=smoke",
        "--set",
        f"{task}.model=small-cnn",
        *SMOKE,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    records = read_records(results, task)
    assert {r["estimator"]["name"] for r in records} == {"lissa", "first-order"}
    config = records[0]["task"]["config"]
    assert config["preset"] == "smoke"
    for field, value in PRESETS["smoke"].items():
        assert config[field] == value  # the record holds the resolved preset values, not None
    for record in records:
        assert record["status"] == "ok", record["failure"]
        assert record["ground_truth"]["points"] > 0

    # the leaderboard lists every other Table 1 setting of the task as not run, with its command, and fills in none
    rendered = bench("leaderboard", "--task", task, "--results-dir", results, "--output-dir", tmp_path / "board")
    assert rendered.code == 0, rendered.err
    text = (tmp_path / "board" / f"{task}.md").read_text()
    settings = [key for key in TABLE1 if key[0] == task]
    not_run = text[text.index("## Paper settings not run here") :]
    rows = [line for line in not_run.splitlines() if line.startswith("| ") and "bench run" in line]
    ran = [key for key in settings if key[1:] == ("small-cnn", "max-loss", True)]  # what the smoke run matches
    assert len(ran) == (1 if task == "mnist" else 0)  # the paper has no small CNN on CIFAR-10
    assert len(rows) == len(settings) - len(ran)
    assert not any(line.startswith("| small-cnn, test point A, with weight decay") for line in rows)
    assert f"{len(rows)} of the paper's {len(settings)} settings" in not_run
    vgg = next(line for line in rows if line.startswith("| vgg13, test point B, with weight decay"))
    assert f"--set {task}.model=vgg13 --set {task}.test_point=p50 --set {task}.weight_decay=0.001" in vgg
    assert f"--set {task}.preset=paper" in vgg and "--device cuda" in vgg


def test_real_loader_on_generated_mnist_files(bench, tmp_path, read_records):
    make_mnist(tmp_path / "data", n_train=40, n_test=10)
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "mnist",
        "--set",
        f"mnist.data_dir={tmp_path / 'data'}",
        "--set",
        "mnist.train_steps=20",
        "--set",
        "mnist.batch_size=8",
        "--set",
        "mnist.eval_size=5",
        *SMOKE,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    record = read_records(results, "mnist")[0]
    assert record["diagnostics"]["problem"]["n_train"] == 40  # cpu preset's 5,500 capped by the 40 on disk
    assert record["task"]["config"]["preset"] == "cpu"


def test_missing_data_is_one_clear_line(bench, tmp_path):
    result = bench(
        "run",
        "--task",
        "cifar",
        "--set",
        f"cifar.data_dir={tmp_path / 'nowhere'}",
        *SMOKE,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "board" / "results",
    )
    assert result.code == 1
    assert len(result.err_lines) == 2, result.err  # the "building task" progress line, then the error
    error = result.err_lines[-1]
    assert error.startswith("bench: error:") and "nowhere" in error and "data_batch_1" in error
    assert "get-real-data" in error


def test_presets_fill_only_unset_fields():
    task = Mnist(VisionConfig(preset="paper", train_steps=123))
    assert task.config.train_steps == 123
    assert task.config.train_size is None and task.config.batch_size == PRESETS["paper"]["batch_size"]
    assert Cifar().config.model == "lenet" and isinstance(Cifar().config, CifarConfig)


def test_paper_reference_is_table_1():
    assert len(TABLE1) == 6 * 3 + 5 * 3
    a_wd = Mnist(VisionConfig(model="lenet"))
    assert a_wd.paper_reference("cg", "top") == {"pearson": 0.83, "spearman": 0.51}
    b_wd = Cifar(CifarConfig(test_point="p50"))
    assert b_wd.paper_reference("exact", "top") == {"pearson": 0.45, "spearman": 0.46}
    a_no_wd = Mnist(VisionConfig(model="resnet50", weight_decay=0.0))
    assert a_no_wd.paper_reference("lissa", "top") == {"pearson": 0.08, "spearman": 0.13}
    assert a_wd.paper_reference("cg", "random") is None
    assert Mnist(dataclasses.replace(VisionConfig(model="lenet"), eval_size=100)).paper_reference("cg", "top") is None


def test_list_models_prints_parameter_counts(bench):
    result = bench("list", "--models")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "      mnist model small-cnn         2,616 parameters" in lines
    assert "      mnist model lenet            44,426 parameters" in lines
    assert "      cifar model lenet            62,006 parameters" in lines
    assert "      cifar model resnet50     23,520,842 parameters" in lines
    assert not any(line.startswith("      iris model") for line in lines)


def test_data_dir_and_download_flags_set_the_task_options(bench, tmp_path, read_records):
    make_mnist(tmp_path / "data", n_train=40, n_test=10)
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "mnist",
        "--data-dir",
        tmp_path / "data",
        "--set",
        "mnist.data_dir=/elsewhere",
        "--set",
        "mnist.train_steps=20",
        "--set",
        "mnist.polish_steps=0",
        "--set",
        "mnist.batch_size=8",
        "--set",
        "mnist.eval_size=5",
        *SMOKE,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err  # the flag wins over --set
    assert read_records(results, "mnist")[0]["task"]["config"]["data_dir"] == str(tmp_path / "data")
    # --download with no network: the download fails and the error says so, naming the directory
    result = bench(
        "run",
        "--task",
        "cifar",
        "--data-dir",
        tmp_path / "empty",
        "--download",
        *SMOKE,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 1 and "download failed" in result.err_lines[-1] and "empty" in result.err_lines[-1]


def test_data_flags_on_a_task_without_data_files_are_a_one_line_error(bench, tmp_path):
    result = bench("run", "--task", "iris", "--download", "--cache-dir", tmp_path / "cache")
    assert result.code == 2
    assert result.err_lines == [
        "bench: error: --download does not apply to task 'iris': it reads no data set from disk"
    ]
