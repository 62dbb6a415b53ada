#!/usr/bin/env bash
# Issue 12's device checks in one prepared run (benchmarks/gpu_pipeline.py; not yet run on a GPU): the data path
# against the bare training step and MC-dropout scoring against bare forward passes on 12 clinical-shape cases, then
# the DynUNet plan's full-data Dice on hippocampus, stopped at BUDGET seconds (default 480). Carries .whl/ (monai,
# nibabel wheels) and .gpu-data/hippocampus beside the checkout, as gpu_check.sh does (docs/design.md, "GPU check").
# Returns $OUT/gpu_pipeline.json (copy it to benchmarks/results/gpu_pipeline.json) and the logs.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src ACTIVESEG_HIPPOCAMPUS=$PWD/.gpu-data/hippocampus ACTIVESEG_CACHE=/tmp/cache
export PYTHONUNBUFFERED=1 TERM=dumb
nvidia-smi -L
cd benchmarks
timeout "${BUDGET:-480}" python3 gpu_pipeline.py --out /tmp/pipeline --cases 12 --workers 6 >"$OUT/gpu_pipeline.log" 2>&1
echo "exit $?"
grep -v "━" "$OUT/gpu_pipeline.log" | tail -30
cp /tmp/pipeline/gpu_pipeline.json "$OUT/" 2>/dev/null || echo "no gpu_pipeline.json (stopped before the end)"
