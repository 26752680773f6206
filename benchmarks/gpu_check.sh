#!/usr/bin/env bash
# The GPU check of napari-irnet in one run (about 5-8 minutes on one H100):
# the device-parametrised tests on cpu and cuda, then walk and prediction timings,
# CPU/CUDA agreement and fine-tuning steps/s (benchmarks/gpu_check.py).
# Needs no napari, no Qt and no downloads; run from the repository root.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if python -c "import pytest" 2>/dev/null; then
  echo "## Device tests"
  NAPARI_IRNET_TEST_DEVICES=cpu,cuda timeout 240 python -m pytest -q -p no:cacheprovider -p no:xvfb tests/test_devices.py || echo "(device tests failed or timed out)"
else
  echo "## Device tests: pytest is not installed here; skipped"
fi
timeout 420 python benchmarks/gpu_check.py --device "${DEVICE:-cuda}" "$@"
