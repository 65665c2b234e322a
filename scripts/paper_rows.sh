#!/usr/bin/env bash
# The Table 1 rows of the committed configs, in the order given: for each, its optimum (trained, polished and
# reported by scripts/stationarity.py), then its row (bench run --publish); last, the stationarity table of all of
# them and the leaderboards. Everything is cached and checkpointed: after an interruption, rerun the same command.
# Usage: BENCH_DATA_DIR=DIR scripts/paper_rows.sh [CONFIG...]   (default: every leaderboards/configs/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
bench=${BENCH:-.venv/bin/bench}
configs=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(leaderboards/configs/*.yaml)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
stamp() { date -u +%FT%TZ; }
for config in "${configs[@]}"; do
    echo "== $(stamp) $config: optimum"
    "$python" scripts/stationarity.py "$config" --output "$scratch/stationarity.md"
    echo "== $(stamp) $config: row"
    "$bench" run --config "$config" --no-progress --no-leaderboard --publish
done
echo "== $(stamp) stationarity table and leaderboards"
"$python" scripts/stationarity.py "${configs[@]}"
for task in $(grep -h '^task:' "${configs[@]}" | awk '{print $2}' | sort -u); do
    "$bench" leaderboard --publish --task "$task"
done
echo "== $(stamp) done"
