#!/usr/bin/env bash
# Everything to measure and check on a machine with a CUDA GPU, in one go (~5 minutes on an H200):
# the whole test suite there (CUDA is then every "auto" device, and the GPU-marked tests run), the
# speed benchmark against the book's pipeline on the GPU, and `cnnlab train --profile` of the recipe.
#
#     bash benchmarks/gpu.sh [DATA_ROOT] [OUT_DIR]
#
# DATA_ROOT holds fashion-mnist/ (and mnist/) with the IDX files (default ../shared/data); the logs,
# profile.txt and trace.json go to OUT_DIR (default $OUT, else gpu-results/).  Runs from the
# repository's root with the python3 that has a CUDA build of torch; nothing is installed.
# On a lent device machine only the repository travels: copy ../shared/data's two folders into an
# ignored folder of the checkout (about 42 MB; e.g. .gpu/data), carry it, and pass it as DATA_ROOT.
set -o pipefail
data=$(realpath "${1:-../shared/data}")
out=${2:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CNNLAB_TEST_DATA=$data MPLBACKEND=Agg

{
    date -u
    nvidia-smi -L
    python3 -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
} 2>&1 | tee "$out/machine.log"

echo "== tests (all; log: $out/tests.log)"
timeout 300 python3 -m pytest -q -p no:cacheprovider --tb=short tests/ > "$out/tests.log" 2>&1
echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -15

echo "== speed: the book's pipeline against cnnlab train on the GPU (2 rounds)"
timeout 240 python3 benchmarks/speed.py --device cuda --rounds 2 --data-dir "$data/fashion-mnist" 2>&1 \
    | tee "$out/speed.log"

echo "== cnnlab train --profile (the recipe on the GPU)"
rm -rf /tmp/cnnlab-gpu-profile
timeout 120 python3 -m cnnlab train --device cuda --profile --no-progress --data-dir "$data/fashion-mnist" \
    --run-dir /tmp/cnnlab-gpu-profile 2>&1 | tee "$out/profile.log"
cp /tmp/cnnlab-gpu-profile/profile.txt /tmp/cnnlab-gpu-profile/trace.json "$out/" 2>/dev/null
date -u
