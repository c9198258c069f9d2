#!/usr/bin/env bash
# The exact commands that produce the weights shipped in deepinv_mol/weights/ (see docs/pretrained.rst).
#
# Each run writes checkpoints to runs/<task>__<model>/ (resumable: rerun the same line with --resume after an
# interruption) and, once all steps are done, exports its best-validation weights plus a manifest entry
# (command, training time, validation curve) into deepinv_mol/weights/.
#
# Sizes were chosen for this 2-core CPU (two runs side by side, one thread each, sharing the machine with
# benchmarks) and a ~1-hour budget: 64x64 crops, batch 2, width-32 networks; mri-radial-4x: 150 steps
# (MoDL started for 250, stopped at 150); ct-sparse-view: all four models 200 steps (a MOL step on CT is several
# times slower than on MRI: ASTRA CPU projections inside every CG iteration).
# --stop-after reproduces exactly the stopped state, the learning-rate schedule included. The validation
# curves in the manifest show how far from converged they are; on a real machine raise --steps (e.g. 5000) and --crop (128), or run data-parallel:
#   torchrun --nproc_per_node=N -m deepinv_mol.cli train ...
#
# Usage:  bash scripts/train_pretrained.sh [mri|ct|all]   (from the repository root, package installed)
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
COMMON="--batch-size 2 --crop 64 --eval-every 50 --val-images 4 --lr 1e-3 --seed 0"

train() {  # task model [extra options, later ones win]
    OMP_NUM_THREADS=1 deepinv-mol train --task "$1" --model "$2" $COMMON "${@:3}" --out "runs/$1__$2" --resume \
        --export deepinv_mol/weights
}

if [[ "$which" == mri || "$which" == all ]]; then
    train mri-radial-4x modl --steps 250 --stop-after 150
    for m in mol-penalty mol-strict; do train mri-radial-4x "$m" --steps 150; done
    # LUSER (mri-radial-4x) is the earlier run: 48x48 crops, 60 steps (its manifest entry holds the command)
fi
if [[ "$which" == ct || "$which" == all ]]; then
    train ct-sparse-view luser --steps 200
    # MOL on CT: 9-13 s a step on the shared machine (50 fixed-point iterations of CG on ASTRA projections)
    for m in modl mol-penalty; do train ct-sparse-view "$m" --steps 200 --eval-every 40; done
    train ct-sparse-view mol-strict --activation maxmin --steps 200 --eval-every 40  # 34.46 dB test (ReLU: 34.18)
fi
