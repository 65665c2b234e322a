"""End-to-end check of the ``imagenet`` task on one GPU, sized to a few minutes: ``bench run --task imagenet`` at the
paper's two test points (loss percentiles 83 and 37) on a small class subset, then the appendix D noise checks.

    python scripts/imagenet_gpu_check.py --data-dir /data/imagenet --out imagenet-check
    python scripts/imagenet_gpu_check.py --synthetic --out imagenet-check     # generated images: the pipeline only

It trains the ResNet-50 optimum (or takes ``--checkpoint``), runs the estimators, re-trains the top 50 and 50 random
training points per test point from the optimum for two epochs, and writes the result records under
``OUT/results/imagenet/`` and ``OUT/noise-checks.json``: per test point, the change of its loss (and of every test
loss, and of top-1/top-5 accuracy) from re-training on all points with the same recipe, against the leave-one-out
effects, and the mean weight-gradient norm over minibatches of 128 at the optimum. ``--set imagenet.FIELD=V``
overrides any task field (``tests/test_imagenet.py`` runs this script on a CPU at a tiny size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULTS = {
    "num_classes": 10,
    "max_train_points": 1000,
    "max_test_points": 500,
    "image_size": 112,
    "train_epochs": 30.0,
    "batch_size": 128,
    "lr": 0.2,
    "chunk_size": 250,
    "retrain_epochs": 2.0,
}
"""Task fields of the check (a few minutes on one H200); ``--set imagenet.FIELD=V`` overrides them."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path, help="ImageNet root (train/ and val/, or torchvision's layout)")
    source.add_argument("--synthetic", action="store_true", help="generate an ImageFolder tree under OUT/data")
    parser.add_argument("--out", type=Path, required=True, help="output directory (cache, results, noise checks)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--estimators", default="first-order,cg", help="comma-separated (default first-order,cg)")
    parser.add_argument("--test-points", default="p83,p37", help="test-point rules (default: the paper's p83,p37)")
    parser.add_argument("--checkpoint", type=Path, help="start from this state dict instead of training")
    parser.add_argument(
        "--synthetic-images",
        type=int,
        nargs=2,
        default=(100, 50),
        metavar=("TRAIN", "VAL"),
        help="generated images per class (default 100 50)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME.FIELD=VALUE", help="extra bench --set option (repeatable)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from benchmark.cli import main as bench
    from benchmark.common import config as configuration
    from benchmark.common.cache import Cache
    from benchmark.contracts.task import BuildContext
    from benchmark.evaluation.runner import resolve_device
    from benchmark.evaluation.selections import select_test_point
    from benchmark.groundtruth.engine import GroundTruth
    from tasks.imagenet import ImageNet, ImageNetConfig
    from tasks.imagenet_data import write_synthetic_tree
    from tasks.imagenet_problem import retrain_all_check

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = dict(DEFAULTS)
    if args.synthetic:
        train, val = args.synthetic_images
        data = write_synthetic_tree(
            out / "data", classes=fields["num_classes"], train_per_class=train, val_per_class=val, size=(160, 200)
        )
    else:
        data = args.data_dir
    fields["data_dir"] = str(data)
    if args.checkpoint is not None:
        fields["checkpoint"] = str(args.checkpoint)
    for item in args.set:
        fields.update(configuration.parse_set([item]).get("imagenet", {}))
    extra = [s for s in args.set if not s.startswith("imagenet.")]
    device = resolve_device(args.device)
    common = [
        "run",
        "--task",
        "imagenet",
        "--device",
        device,
        "--estimator",
        args.estimators,
        "--cache-dir",
        str(out / "cache"),
        "--results-dir",
        str(out / "results"),
        "--no-progress",
        "--no-leaderboard",
        *(["--threads", str(args.threads)] if args.threads else []),
    ]
    for name, value in fields.items():
        common += ["--set", f"imagenet.{name}={json.dumps(value)}"]
    for item in extra:
        common += ["--set", item]

    rules = [r.strip() for r in args.test_points.split(",") if r.strip()]
    timings: dict[str, float] = {}
    for rule in rules:
        start = time.perf_counter()
        code = bench([*common, "--set", f"imagenet.test_point={rule}"])
        timings[rule] = time.perf_counter() - start
        if code != 0:
            print(f"imagenet_gpu_check: bench run at test point {rule} failed with exit code {code}", file=sys.stderr)
            return code

    # The noise checks rebuild the run's problem (its optimum is cached) and read its ground-truth reference.
    task = ImageNet(configuration.build(ImageNetConfig, fields, "imagenet"))
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Cache(out / "cache")
    problem = task.build(BuildContext(device, 0, cache, progress=False))
    protocol = task.protocol()
    records = [json.loads(p.read_text()) for p in sorted((out / "results" / "imagenet").glob("*.json"))]
    report: dict[str, Any] = {"device": device, "task_config": task.describe(), "run_seconds": timings, "points": {}}
    for rule in rules:
        test_index, test_loss = select_test_point(problem, rule)
        mine = [r for r in records if r["test_point"]["rule"] == rule and r["status"] == "ok"]
        effects = {i: e for r in mine for i, e in zip(r["points"]["train_indices"], r["points"]["retrained"])}
        ground_truth = GroundTruth(problem, protocol.retrain, cache, task.problem_key(0), test_index)
        reference = ground_truth.reference()  # cached by the run: nothing is re-trained here
        summary = retrain_all_check(problem, reference.theta, test_index, list(effects.values()))
        report["points"][rule] = {
            "test_loss": test_loss,
            "run_ids": sorted({r["run_id"] for r in mine}),
            "retrain_all": summary,
        }
        print(
            f"{rule}: test point {test_index} (loss {test_loss:.4g}); re-training on all points changes its loss "
            f"by {summary['loss_change']:+.4g}, median |LOO effect| {summary['median_abs_loo_effect']}; "
            f"top-5 {summary['top5_before']:.4f} -> {summary['top5_after']:.4f}"
        )
    norms = report["batch_gradient_norm"] = records[0]["diagnostics"]["task"]["batch_gradient_norm"]  # from the run
    print(
        f"mean weight-gradient norm over {norms['batches']} batches of 128: {norms['mean']:.4g} "
        f"(paper: 20.18 theirs, 15.89 torchvision's)"
    )
    (out / "noise-checks.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out / 'noise-checks.json'} and {len(records)} records under {out / 'results' / 'imagenet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
