#!/usr/bin/env bash
# Issue 20 part 3 on a GPU machine, in one go (docs/gpu.md): train --amp vs float32 (resnet50, 224 px) with
# the GPU's utilisation, the training inputs, encode fp16 and fp32 against the PIL + DataLoader + eager
# PyTorch baseline with the CPU agreement. Needs ../shared/tools/gpu-offline's parts installed first
# (install.sh: /tmp/imagesim-gpu/env.sh). Run from the repository root; prints every figure:
#
#     bash benches/gpu_issue20.sh [WORK] 2>&1 | tee "$OUT/gpu-issue20.log"
#
# COPIES (default 80: the 128 packed chips become 10,240) sets how far the sample is grown; BACKBONE (resnet50),
# SIZE (224), BATCH (256) and EPOCHS (2) the runs (smaller ones for a dry run on a CPU).
set -uo pipefail
. /tmp/imagesim-gpu/env.sh
export PYTHONUNBUFFERED=1 NO_COLOR=1
WORK=${1:-/tmp/gpu-run}
mkdir -p "$WORK"
T0=$(date +%s)
step() { echo; echo "=== [$(($(date +%s) - T0)) s] $*"; }
quiet() { grep -v "━" || true; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc)"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', o.__version__)"
W=$(($(nproc) > 4 ? $(nproc) - 2 : 2))

if [ ! -f "$WORK/chips/chips.parquet" ]; then
    step "grow the packed sample"
    python3 /tmp/imagesim-gpu/replicate.py /tmp/imagesim-gpu/data/chips "$WORK/chips" --copies "${COPIES:-80}"
fi

B=${BACKBONE:-resnet50} S=${SIZE:-224} N=${BATCH:-256}
step "train: inputs, then $B $S px float32 and --amp ($W workers, batch $N)"
python3 benches/bench_train.py --train --chips "$WORK/chips" --labels "$WORK/chips/labels.csv" --backbone "$B" \
    --size "$S" --batch-size "$N" --workers "$W" --epochs "${EPOCHS:-2}" --count 1024 --repeat 1 --out "$WORK" 2>&1 | quiet

for precision in --fp16 ""; do
    step "encode ${precision:-fp32}: imagesim (--provider auto) vs PIL + DataLoader + eager, batch $N"
    python3 benches/bench_encode.py --chips "$WORK/chips" --backbone "$B" --size "$S" --batch-size "$N" --workers "$W" \
        $precision --agree 512 --out "$WORK" 2>&1 | quiet
done
step "done"
