#!/usr/bin/env bash
# One prepared device run (about 8 minutes on an H100): the CUDA tests, the hippocampus benchmark grid with longer
# training (benchmarks/hippocampus_gpu.yaml) and the annotation-units benchmark at 400 iterations per round, all at
# once on one GPU. Each benchmark resumes and stops at BUDGET seconds (default 400); what finished comes back in
# $OUT/results.tar.gz (run directories without checkpoints). Needs .whl/ (monai, nibabel wheels) and
# .gpu-data/hippocampus carried beside the checkout (see docs/design.md, "GPU check").
# The earlier device run, benchmarks/gpu_benchmark.py (the demo and a wider full-data model), is run on its own.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src ACTIVESEG_HIPPOCAMPUS=$PWD/.gpu-data/hippocampus ACTIVESEG_CACHE=/tmp/cache
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TERM=dumb
budget=${BUDGET:-400}
nvidia-smi -L
mkdir -p /tmp/results
python3 -c 'import json, sys; sys.path.insert(0, "benchmarks"); from run_benchmarks import machine; print(json.dumps(machine()))' \
  >/tmp/results/machine.json
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py >"$OUT/pytest.log" 2>&1 &
timeout "$budget" python3 -m activeseg.cli benchmark benchmarks/hippocampus_gpu.yaml --data "$ACTIVESEG_HIPPOCAMPUS" \
  --results-dir /tmp/results/hippocampus-gpu --no-report >"$OUT/hippocampus.log" 2>&1 &
units="python3 benchmarks/units_benchmark.py --out /tmp/results/units-seed-0 --device cuda --iterations 400 --mc-samples 8"
timeout "$budget" $units --kinds patch --results-dir /tmp/units-patch >"$OUT/units-patch.log" 2>&1 &
timeout "$budget" $units --kinds slice volume --results-dir /tmp/units-other >"$OUT/units-other.log" 2>&1 &
wait
tail -3 "$OUT/pytest.log"
grep -v "━" "$OUT/hippocampus.log" | tail -8
for log in units-patch units-other; do grep -v "━" "$OUT/$log.log" | tail -n 3; done
tar czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude='*.npz' -C /tmp/results . && ls -la "$OUT"
