#!/usr/bin/env bash
# Holds the head-only program to its size budget: strips a copy of BINARY with STRIP and
# fails when it is more than 10 % over the budget in BUDGET_FILE (a byte count on its first
# line that is not a comment). Raising the budget on purpose means editing that file.
# Usage: check_head_size.sh BINARY STRIP BUDGET_FILE
set -euo pipefail
bin=$1 strip=$2 budget_file=$3
[ -f "$bin" ] || { echo "check_head_size: $bin: no such file" >&2; exit 1; }
budget=$(grep -v '^#' "$budget_file" | grep -E '^[0-9]+$' | head -1 || true)
[ -n "$budget" ] || { echo "check_head_size: $budget_file: no byte count" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$strip" -o "$tmp" "$bin"
size=$(stat -c %s "$tmp")
limit=$((budget + budget / 10))
echo "head-only program $(basename "$bin"): stripped $size bytes, budget $budget (limit +10 % = $limit)"
if [ "$size" -gt "$limit" ]; then
  echo "check_head_size: $bin grew to $size bytes, over $limit; shrink it or raise $budget_file on purpose" >&2
  exit 1
fi
