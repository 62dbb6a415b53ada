#!/usr/bin/env bash
# A second prepared device run (about 6 minutes on an H100): the units benchmark of benchmarks/gpu_check.sh for more
# seeds (default 1 2 3 4; seed 0 came from gpu_check.sh), patches in one process and slices and volumes in another
# per seed, all on one GPU. Each process resumes and stops at BUDGET seconds (default 330); the run directories come
# back without checkpoints in $OUT/results.tar.gz as units-seed-N/. Needs .whl/ and .gpu-data/ as gpu_check.sh does.
#   BUDGET=330 bash benchmarks/gpu_units.sh 1 2 3 4
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src ACTIVESEG_HIPPOCAMPUS=$PWD/.gpu-data/hippocampus ACTIVESEG_CACHE=/tmp/cache
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TERM=dumb
budget=${BUDGET:-330}
seeds=("${@:-1 2 3 4}")
nvidia-smi -L
mkdir -p /tmp/results
units="python3 benchmarks/units_benchmark.py --device cuda --iterations 400 --mc-samples 8"
for seed in ${seeds[@]}; do
  out=/tmp/results/units-seed-$seed
  timeout "$budget" $units --seed "$seed" --out "$out" --kinds patch --results-dir "/tmp/summaries/p$seed" \
    >"$OUT/units-$seed-patch.log" 2>&1 &
  timeout "$budget" $units --seed "$seed" --out "$out" --kinds slice volume --results-dir "/tmp/summaries/o$seed" \
    >"$OUT/units-$seed-other.log" 2>&1 &
done
wait
for log in "$OUT"/units-*.log; do echo "== $log"; grep -E "^(patch|slice|volume)/" "$log"; done
tar czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude='*.npz' -C /tmp/results . && cat "$OUT"/units-*.log >"$OUT/logs.txt" \
  && rm "$OUT"/units-*.log && ls -la "$OUT"
