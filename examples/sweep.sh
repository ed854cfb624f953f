#!/usr/bin/env bash
# Scripting genflow in a shell loop: sample one run with several solvers and step counts, score
# each set of samples with `genflow eval --samples`, and print a table of cost against quality.
#   examples/sweep.sh [RUN] [OUT.tsv]
# Environment: SOLVERS, STEPS (space-separated lists), N (samples per point), DATASET (the
# run's training data, for the scores). The samples live in a temporary folder that is
# removed on exit, also after an error or Ctrl-C. `genflow sweep` does the same in one process.
set -euo pipefail
run=${1:-runs/latest}
table=${2:-sweep.tsv}
solvers=${SOLVERS:-euler heun dpm++2m ddim ancestral}
steps_list=${STEPS:-1 2 4 10 20}
n=${N:-898}
dataset=${DATASET:-digits}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

field() {  # field JSON KEY: one value of a JSON object
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

printf 'solver\tsteps\tnfe\tseconds\tfd\tfd_floor\tkid\n' > "$table"
for solver in $solvers; do
  for steps in $steps_list; do
    samples="$work/$solver-$steps.npz"
    sampled=$(genflow sample "$run" --solver "$solver" --steps "$steps" --n "$n" --seed 0 --out "$samples" --json)
    scored=$(genflow eval --samples "$samples" --dataset "$dataset" --json)
    printf '%s\t%s\t%s\t%s\t%.4f\t%.4f\t%.5f\n' "$solver" "$steps" "$(field "$sampled" nfe)" "$(field "$sampled" seconds)" \
      "$(field "$scored" fd)" "$(field "$scored" fd_floor)" "$(field "$scored" kid)" >> "$table"
  done
done
if command -v column > /dev/null; then column -t -s $'\t' "$table"; else cat "$table"; fi
