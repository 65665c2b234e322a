"""The ImageNet task on a generated ImageFolder tree: streamed numerics against in-memory references, checkpoints,
missing data, the noise checks and the whole pipeline (``scripts/imagenet_gpu_check.py`` on a CPU at a tiny size)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import grad

from benchmark import BuildContext, Problem, Recipe
from benchmark.common.cache import Cache
from benchmark.groundtruth.engine import GroundTruth
from benchmark.groundtruth.pbrf import PbrfGroundTruth, PbrfSolver
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.training import descend
from estimators.cg import CGConfig, ConjugateGradient
from estimators.first_order import FirstOrder
from tasks.imagenet import ImageNet, ImageNetConfig, build_network
from tasks.imagenet_data import ImageFiles, ImageRows, eval_transform, image_list, write_synthetic_tree
from tasks.imagenet_problem import StreamedProblem, batch_gradient_check, batch_gradient_norms, retrain_all_check
from tests.conftest import REPO_ROOT, assert_one_line_error, one_thread

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 4, 2


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 4 training and 2 validation JPEGs each, 20 x 24 pixels."""
    return write_synthetic_tree(tmp_path_factory.mktemp("imagenet"), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS)


class TinyNet(nn.Module):
    """A small CNN with BatchNorm (evaluated with running statistics, as the task's ResNets are)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.avg_pool2d(torch.tanh(self.norm(self.conv(x))), 2)
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module")
def problems(tree: Path) -> tuple[StreamedProblem, Problem]:
    """The same float64 problem streamed (3 batches of at most 5 of the 12 training images) and in memory."""
    with one_thread():
        torch.manual_seed(0)
        module = TinyNet().double()
        module.norm.running_mean.uniform_(-0.2, 0.2)
        module.norm.running_var.uniform_(0.5, 1.5)
        module.eval()
        transform = eval_transform(8)
        rows = {
            split: ImageRows(
                ImageFiles(image_list(tree, split, "auto")[0], transform),
                torch.device("cpu"),
                torch.float64,
                chunk_size=5,
            )
            for split in ("train", "val")
        }
        streamed = StreamedProblem.from_module(
            module,
            cross_entropy,
            rows["train"],
            rows["train"].labels,
            rows["val"],
            rows["val"].labels,
            weight_decay=0.01,
            chunk_size=5,
        )
        memory = Problem.from_module(
            module,
            cross_entropy,
            rows["train"][:],
            rows["train"].labels,
            rows["val"][:],
            rows["val"].labels,
            weight_decay=0.01,
        )
    return streamed, memory


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_data_layout_and_rows(tree: Path) -> None:
    samples, classes = image_list(tree, "train", "auto")
    assert classes == sorted(classes) and len(classes) == CLASSES
    assert len(samples) == CLASSES * TRAIN_PER_CLASS
    rows = ImageRows(ImageFiles(samples, eval_transform(8)), torch.device("cpu"), chunk_size=5)
    assert rows[[0, 5]].shape == (2, 3, 8, 8)
    assert [r for r, _, _ in rows.passes()] == [slice(0, 5), slice(5, 10), slice(10, 12)]
    streamed = torch.cat([x for _, x, _ in rows.passes()])
    torch.testing.assert_close(streamed, rows[:])
    loaded = list(rows.load([torch.tensor([3, 1]), None]))
    torch.testing.assert_close(loaded[0][0], rows[[3, 1]])
    assert loaded[0][1].tolist() == [rows.labels[3].item(), rows.labels[1].item()]
    assert len(loaded[1][0]) == len(rows)


def test_streamed_problem_equals_in_memory(problems: tuple[StreamedProblem, Problem]) -> None:
    streamed, memory = problems
    theta = streamed.theta
    close(streamed.objective(theta), memory.objective(theta))
    close(streamed.test_losses(), memory.test_losses())
    assert streamed.gradient_norm() == pytest.approx(memory.gradient_norm(), rel=1e-9)
    vectors = torch.randn(2, streamed.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    close(streamed.hvp(vectors), memory.hvp(vectors))
    close(streamed.hvp(vectors), (memory.hessian() @ vectors.T).T)
    products = streamed.train_gradient_products(vectors)
    close(products, vectors @ memory.train_gradients(list(range(memory.n_train))).T)
    close(streamed.hvp(vectors, torch.tensor([0, 7])), memory.hvp(vectors, torch.tensor([0, 7])))


def test_streamed_problem_casts_like_a_problem(problems: tuple[StreamedProblem, Problem]) -> None:
    streamed, memory = problems
    single = streamed.to(torch.float32)
    assert isinstance(single, StreamedProblem) and isinstance(single.x_train, ImageRows)
    assert single.dtype == torch.float32 and single.x_train[:2].dtype == torch.float32
    assert single.y_train.dtype == streamed.y_train.dtype  # labels keep their integer dtype
    close(streamed.to(torch.float64).test_losses(), memory.test_losses())


def test_streamed_influence_equals_in_memory(problems: tuple[StreamedProblem, Problem]) -> None:
    """Influence of every training point on a test point: streamed against the dense in-memory solve."""
    streamed, memory = problems
    hessian = memory.hessian()
    damping = max(0.0, -float(torch.linalg.eigvalsh(hessian).min())) + 0.1  # the problem is not at an optimum
    config = CGConfig(damping=damping, tol=1e-12)
    for estimator_cls, hyper in ((FirstOrder, None), (ConjugateGradient, config)):
        a, b = estimator_cls(hyper), estimator_cls(hyper)
        a.prepare(streamed)
        b.prepare(memory)
        close(a.influence([1, 4]), b.influence([1, 4]))
    g = memory.test_gradients([1])
    exact = (
        g
        @ torch.linalg.inv(hessian + damping * torch.eye(memory.n_params, dtype=torch.float64))
        @ memory.train_gradients(list(range(memory.n_train))).T
    ) / memory.n_train
    cg = ConjugateGradient(config)
    cg.prepare(streamed)
    torch.testing.assert_close(cg.influence([1]), exact, rtol=1e-7, atol=1e-12)


def test_streamed_retraining_and_ground_truth_equal_in_memory(
    problems: tuple[StreamedProblem, Problem], tmp_path: Path
) -> None:
    streamed, memory = problems
    recipe = Recipe(steps=5, lr=0.1, batch_size=4, momentum=0.9, seed=3)
    weights = torch.ones(3, streamed.n_train, dtype=torch.float64)
    weights[1, 2] = weights[2, 9] = 0.0
    start = streamed.theta.unsqueeze(0).expand(3, -1)
    close(descend(streamed, start, weights, recipe), descend(memory, start, weights, recipe))
    effects = [
        GroundTruth(p, recipe, Cache(tmp_path / name), {"task": "t"}, 1, chunk_size=2).effects([0, 2, 9])
        for name, p in (("streamed", streamed), ("memory", memory))
    ]
    for i in (0, 2, 9):
        assert effects[0][i].loss_change == pytest.approx(effects[1][i].loss_change, rel=1e-9, abs=1e-12)


def test_noise_checks(problems: tuple[StreamedProblem, Problem]) -> None:
    streamed, memory = problems
    norms = batch_gradient_norms(streamed, batch_size=4, seed=5)
    order = torch.randperm(streamed.n_train, generator=torch.Generator().manual_seed(5))
    expected = [
        torch.linalg.vector_norm(
            grad(lambda t: memory.losses(t, memory.x_train[b], memory.y_train[b]).mean())(memory.theta)
        )
        for b in order.split(4)
    ]
    close(norms, torch.stack(expected))
    summary = batch_gradient_check(streamed, batch_size=4, max_batches=2, seed=5)
    assert summary["batches"] == 2 and summary["mean"] == pytest.approx(float(norms[:2].mean()))
    unchanged = retrain_all_check(streamed, streamed.theta, 2, [0.1, -0.3])
    assert unchanged["loss_change"] == 0.0 and unchanged["top1_before"] == unchanged["top1_after"]
    assert unchanged["median_abs_loo_effect"] == pytest.approx(0.2)
    moved = streamed.theta + 0.05
    changed = retrain_all_check(streamed, moved, 2, [0.1, -0.3])
    assert changed["loss_change"] == pytest.approx(float(memory.test_losses(moved)[2] - memory.test_losses()[2]))


def test_missing_data_is_one_line(bench, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    result = bench(
        "run",
        "--task",
        "imagenet",
        "--estimator",
        "first-order",
        "--set",
        f"imagenet.data_dir={empty}",
        "--no-progress",
    )
    errors = [line for line in result.err_lines if not line.startswith("bench: building task")]  # the info log
    assert_one_line_error(
        dataclasses.replace(result, err="\n".join(errors)),
        f"ImageNet not found in {empty}",
        "train/<class>/*.JPEG",
        "image-net.org",
        "imagenet.data_dir",
    )
    result = bench("run", "--task", "imagenet", "--set", "imagenet.arch=resnet51")
    assert_one_line_error(result, "resnet51", "resnet50")


class Unsafe:
    """Not a tensor: a pickle naming this class must be refused by ``weights_only`` loading."""


def tiny_config(tree: Path, **fields: object) -> ImageNetConfig:
    return ImageNetConfig(data_dir=str(tree), num_classes=CLASSES, image_size=16, **fields)


def test_resnet50_checkpoint_loads_weights_only(tree: Path, tmp_path: Path) -> None:
    """A torchvision-style 1000-class ResNet-50 state dict: loaded with weights_only, the classifier cut to the
    class subset, BatchNorm in evaluation mode; the streamed test losses equal the module's own."""
    torch.manual_seed(0)
    full = build_network("resnet50", 1000).eval()
    with torch.no_grad():
        for module in full.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    task = ImageNet(tiny_config(tree, checkpoint=str(path)))
    problem = task.build(BuildContext("cpu", 0, Cache(tmp_path / "cache"), progress=False))
    assert isinstance(problem, StreamedProblem) and problem.n_params == 23_514_179  # ResNet-50, 3 outputs
    with torch.no_grad():
        logits = full(problem.x_test[:])[:, :CLASSES]
    torch.testing.assert_close(problem.test_losses(), cross_entropy(logits, problem.y_test), rtol=1e-4, atol=1e-4)
    assert "checkpoint_sha256" in task.problem_key(0)

    bad = tmp_path / "unsafe.pth"
    torch.save({"state_dict": Unsafe()}, bad)
    with pytest.raises(Exception, match="weights_only=True") as error:
        ImageNet(tiny_config(tree, checkpoint=str(bad))).build(
            BuildContext("cpu", 0, Cache(tmp_path / "cache"), progress=False)
        )
    assert type(error.value).__name__ == "DataError"


def test_gpu_check_script_runs_the_pipeline_on_cpu(tree: Path, tmp_path: Path) -> None:
    """The whole pipeline through ``bench run --task imagenet`` (ResNet-18 for speed): training, streamed influence,
    top-k leave-one-out re-training, result records and the noise checks."""
    spec = importlib.util.spec_from_file_location("imagenet_gpu_check", REPO_ROOT / "scripts" / "imagenet_gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "check"
    settings = {
        "num_classes": CLASSES,
        "max_train_points": None,
        "max_test_points": None,
        "image_size": 16,
        "arch": "resnet18",
        "train_epochs": 5.0,
        "batch_size": 4,
        "lr": 0.01,
        "augment": False,
        "chunk_size": 16,
        "eval_size": 3,
        "retrain_epochs": 1.0,
        "retrain_batch_size": 4,
    }
    argv = [
        "--data-dir",
        str(tree),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--estimators",
        "first-order",
        "--test-points",
        "p83",
    ]
    argv += [a for k, v in settings.items() for a in ("--set", f"imagenet.{k}={json.dumps(v)}")]
    assert script.main(argv) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "results" / "imagenet").glob("*.json"))]
    assert {r["selection"]["kind"] for r in records} == {"top", "random"}
    for record in records:
        assert record["status"] == "ok", record["failure"]
        assert record["test_point"]["rule"] == "p83"
        assert record["task"]["config"]["arch"] == "resnet18"
        assert len(record["points"]["retrained"]) == 3
        assert record["ground_truth"]["recipe"]["steps"] == 3  # 1 epoch of 12 images in batches of 4
    report = json.loads((out / "noise-checks.json").read_text())
    point = report["points"]["p83"]
    assert point["retrain_all"]["loss_change"] == pytest.approx(
        records[0]["ground_truth"]["reference_drift"], rel=1e-4, abs=1e-6
    )
    assert report["batch_gradient_norm"]["batches"] == 1 and report["batch_gradient_norm"]["mean"] > 0
    for record in records:  # the gradient-norm check is part of every record, not only of the script's report
        assert record["diagnostics"]["task"]["batch_gradient_norm"] == report["batch_gradient_norm"]


def test_streamed_pbrf_equals_in_memory(problems: tuple[StreamedProblem, Problem], tmp_path: Path) -> None:
    """The proximal Bregman response streams the training set in passes: the same responses as in memory."""
    streamed, memory = problems
    solver = PbrfSolver(damping=0.1, rtol=1e-8)
    effects = [
        PbrfGroundTruth(p, solver, Cache(tmp_path / name), {"task": "t"}, 1, chunk_size=2).effects([0, 2, 9])
        for name, p in (("streamed", streamed), ("memory", memory))
    ]
    for i in (0, 2, 9):
        assert effects[0][i].loss_change == pytest.approx(effects[1][i].loss_change, rel=1e-7, abs=1e-12)
        assert effects[0][i].gradient_norm <= 1e-6
