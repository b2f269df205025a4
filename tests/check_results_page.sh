#!/usr/bin/env bash
# ctest results_page: docs/results.md and its plots are exactly what bench/results/make_page.py
# makes from the run files committed under docs/results/runs, so no number on the page was typed
# by hand and no plot is stale.   usage: check_results_page.sh SOURCE_DIR SCRATCH_DIR
set -euo pipefail
src="$1" out="$2"
# Debian's python3 first: its python3-matplotlib (from .ci/setup) draws the plots.
py=/usr/bin/python3
[ -x "$py" ] || py="$(command -v python3 || true)"
[ -n "$py" ] || { echo "SKIP: python3 is not installed (.ci/setup installs it)"; exit 77; }
"$py" -c "import matplotlib" 2> /dev/null || { echo "SKIP: python3-matplotlib is not installed (.ci/setup installs it)"; exit 77; }
rm -rf "$out"
mkdir -p "$out"
"$py" "$src/bench/results/make_page.py" --runs "$src/docs/results/runs" --out "$out/results.md" > /dev/null
diff -u "$src/docs/results.md" "$out/results.md" || { echo "docs/results.md differs from make_page.py's output"; exit 1; }
status=0
for f in "$out"/results/*.svg "$src"/docs/results/*.svg; do
  name="$(basename "$f")"
  if ! cmp -s "$out/results/$name" "$src/docs/results/$name"; then
    echo "plot $name: committed and regenerated differ (or one is missing)"
    status=1
  fi
done
exit $status
