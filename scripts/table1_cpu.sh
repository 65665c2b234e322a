#!/usr/bin/env bash
# Table 1 rows on the cpu preset (real small MNIST / CIFAR-10 subsets, 2-core CPU), then their leaderboards.
# Usage: BENCH_DATA_DIR=DIR scripts/table1_cpu.sh [CONFIG...]   (default: every leaderboards/configs/*.yaml)
# Data: ../shared/tools/get-real-data DIR, or torchvision's layout under DIR. Finished work is cached: rerun to resume.
# Writes the committed tables (--publish): records under leaderboards/results, then leaderboards/{mnist,cifar}.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH:-.venv/bin/bench}
configs=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(leaderboards/configs/*.yaml)
for config in "${configs[@]}"; do
    echo "== $config"
    start=$SECONDS
    "$bench" run --config "$config" --no-progress --no-leaderboard --publish
    echo "== $config: $((SECONDS - start)) s"
done
"$bench" leaderboard --publish --task mnist
"$bench" leaderboard --publish --task cifar
