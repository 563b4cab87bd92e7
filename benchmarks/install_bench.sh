#!/usr/bin/env bash
# The comparison libraries of benchmarks/bench_hessian.py, installed beside a CPU torch.
# curvlinops-for-pytorch depends on backpack-for-pytorch, which depends on torchvision; from PyPI
# those pull the newest (CUDA, several GB) torch and replace the CPU build, and PyPI's torchvision
# does not import beside torch 2.13.0+cpu anyway. Neither library needs torchvision on the code
# paths the benchmark uses (backpack imports it only in backpack/utils/examples.py), so they are
# installed without their dependencies, and then only the dependencies those code paths import,
# with torch pinned by a constraint. Not part of gdlab's install or of CI.
set -euo pipefail
PY=${PYTHON:-python}
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$CONSTRAINTS"
"$PY" -m pip install -c "$CONSTRAINTS" --no-deps "curvlinops-for-pytorch==3.0.1" "backpack-for-pytorch==1.7.1" \
    "einconv==0.1.0" "unfoldNd" "pyhessian==0.1"
"$PY" -m pip install -c "$CONSTRAINTS" einops linear_operator opt-einsum
"$PY" -c "import torch, curvlinops, pyhessian; print('curvlinops and PyHessian beside torch', torch.__version__)"
