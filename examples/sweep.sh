#!/usr/bin/env bash
# Sweep solvers and step counts on one run; write a table of NFE and seconds.
#   examples/sweep.sh [RUN] [OUT.tsv]
set -euo pipefail
run=${1:-runs/latest}
table=${2:-sweep.tsv}
out=$(mktemp -d)
printf 'solver\tsteps\tnfe\tseconds\tsamples\n' > "$table"
for solver in euler heun dpm++2m ddim ancestral; do
  for steps in 1 2 4 10 20; do
    json=$(genflow sample "$run" --solver "$solver" --steps "$steps" --n 256 --seed 0 \
      --out "$out/$solver-$steps.npz" --json)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["solver"], r["steps"], r["nfe"], r["seconds"], r["out"], sep="\t")' "$json" >> "$table"
  done
done
column -t -s $'\t' "$table"
