#!/usr/bin/env bash
# A/B of the 30-minute Hippocampus fold-0 figure across a refactoring: the commit before it (BEFORE) and the working
# tree, run back to back on the same machine with nothing else running, each reported by bench_train_hippocampus.py.
#   bash benchmarks/ab_house.sh [BEFORE_COMMIT] [MINUTES]
# Writes benchmarks/results/house_before.md and house_after.md (runs under runs/house_{before,after}).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE="${1:-7a93a9e}"
MIN="${2:-30}"
DATA=../shared/data/Dataset004_Hippocampus
[ -d "$DATA" ] || { echo "skipped: $DATA is absent (needs ../shared/data)"; exit 0; }
WT="$(mktemp -d)/before"
git worktree add --detach "$WT" "$BEFORE" >/dev/null
trap 'git worktree remove --force "$WT"' EXIT
mkdir -p runs
for arm in before after; do
    src="$PWD/src"; [ "$arm" = before ] && src="$WT/src"
    rm -rf "runs/house_$arm"
    PYTHONPATH="$src" /usr/bin/time -v .venv/bin/focusseg train "$DATA" --out "runs/house_$arm" --fold 0 \
        --time-budget "$MIN" --no-progress 2> "runs/house_$arm.time"
    .venv/bin/python benchmarks/bench_train_hippocampus.py --from-run "runs/house_$arm" --stem "house_$arm" \
        --time-log "runs/house_$arm.time" \
        --heading "$( [ "$arm" = before ] && echo "before the layering change ($BEFORE)" || echo "after the layering change ($(git rev-parse --short HEAD) + working tree)")"
done
