#!/usr/bin/env bash
# The units benchmark over seeds on CPU, two seeds at a time on a 2-core machine (one torch thread each): 400 iterations
# per round (the GPU runs' training; at the default 150, random patches underfit at 0.30-0.47 Dice),
# 6 MC-dropout samples, and the strategies that answer "do partial labels train, and do they beat whole volumes":
# patches by random, foreground-random and BALD, random slices, random volumes (about 20 minutes per seed).
# Each seed's run directories go to $UNITS_OUT/seed-N (default /tmp/activeseg-units-cpu; the script resumes) and its
# units.json and figure to benchmarks/results/cpu-units/seed-N/; `python benchmarks/run_benchmarks.py --render-only` summarises the seeds.
#   bash benchmarks/cpu_units.sh 0 1 2 3 4
set -euo pipefail
cd "$(dirname "$0")/.."
out=${UNITS_OUT:-/tmp/activeseg-units-cpu}
python=${PYTHON:-.venv/bin/python}
seeds=("${@:-0 1 2 3 4}")
run_seed() {
  PYTHONPATH=src OMP_NUM_THREADS=1 "$python" benchmarks/units_benchmark.py --seed "$1" --out "$out/seed-$1" \
    --results-dir "benchmarks/results/cpu-units/seed-$1" \
    --iterations 400 --strategies random foreground-random bald >"$out/seed-$1.log" 2>&1
}
mkdir -p "$out"
running=0
for seed in ${seeds[@]}; do
  run_seed "$seed" &
  running=$((running + 1))
  if [ "$running" -ge "${PARALLEL:-2}" ]; then wait -n; running=$((running - 1)); fi
done
wait
grep -hE "^(patch|slice|volume)/" "$out"/seed-*.log
