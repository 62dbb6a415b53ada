#!/usr/bin/env bash
# One prepared device run: CUDA tests, then the GPU benchmark. Needs .whl/ (monai, nibabel wheels) and
# .gpu-data/hippocampus carried beside the checkout (see docs/design.md, "GPU check").
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src ACTIVESEG_HIPPOCAMPUS=$PWD/.gpu-data/hippocampus ACTIVESEG_CACHE=/tmp/cache
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_scorers.py tests/test_strategy_contract.py 2>&1 | tee "$OUT/pytest.log" | tail -5
python3 benchmarks/gpu_benchmark.py --out "$OUT" 2>&1 | grep -v "━" | tail -20
