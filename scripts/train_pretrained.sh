#!/usr/bin/env bash
# The exact commands that produce the weights shipped in deepinv_mol/weights/ (see docs/pretrained.rst).
#
# Each run writes checkpoints to runs/<task>__<model>/ (resumable: rerun the same line with --resume after an
# interruption) and, once all steps are done, exports its best-validation weights plus a manifest entry
# (command, training time, validation curve) into deepinv_mol/weights/.
#
# Sizes were chosen for a shared 2-core CPU (load 8-17) and a 40-minute budget: 48x48 crops, batch 2, 100 steps, width-32
# networks. They are far from converged (see the validation curves in the manifest); on a real machine raise
# --steps (e.g. 5000) and --crop (128), or run data-parallel:  torchrun --nproc_per_node=N -m deepinv_mol.cli train ...
#
# Usage:  bash scripts/train_pretrained.sh [mri|ct|all]   (from the repository root, package installed)
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
MODELS="mol-penalty mol-strict modl luser"
COMMON="--steps 100 --batch-size 2 --crop 48 --eval-every 25 --val-images 2 --lr 1e-3 --seed 0"

train() {  # task model [extra options, later ones win]
    deepinv-mol train --task "$1" --model "$2" $COMMON "${@:3}" --out "runs/$1__$2" --resume --export deepinv_mol/weights
}

if [[ "$which" == mri || "$which" == all ]]; then
    for m in mol-penalty mol-strict modl; do train mri-radial-4x "$m"; done
    # LUSER was retrained last with CG data consistency, in the time left: 60 steps
    train mri-radial-4x luser --steps 60 --eval-every 20
fi
if [[ "$which" == ct || "$which" == all ]]; then
    for m in $MODELS; do train ct-sparse-view "$m"; done
fi
