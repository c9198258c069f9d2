"""Re-export the shipped weights with converged power-iteration vectors (issue 12).

Strict MonotoneCNN and LUSER's ShallowEquilibrium keep persistent power vectors as buffers; shipped with
one power step per training step they lagged, so LUSER's certified contraction factor read up to 1.075 (>1)
as loaded. Weights are not changed, only the vectors. Run from the repository root:

    python scripts/converge_shipped_vectors.py
"""

import json

from deepinv_mol import pretrained
from deepinv_mol.models.conv_norm import converge_power_vectors

WEIGHTS = pretrained.weights_dir()


def bounds(model):
    nets = [m for m in model.modules() if hasattr(m, "update_normalisation")]
    return [round(float(n.lipschitz_bound()), 4) for n in nets]


def main():
    manifest = pretrained.read_manifest(WEIGHTS)
    for key, entry in sorted(manifest.items()):
        task, name = key.split("/")
        if name not in ("mol-strict", "luser"):
            continue
        model = pretrained.load_pretrained(name, task)
        before = bounds(model)
        converge_power_vectors(model, n_iter=5000, tol=1e-7)
        after = bounds(model)
        meta = {k: v for k, v in entry.items() if k not in ("file", "sha256", "size_bytes", "config")}
        pretrained.save_pretrained(model, WEIGHTS, task, name, entry["config"], metadata=meta)
        print(json.dumps({"model": key, "bounds_before": before, "bounds_after": after}))


if __name__ == "__main__":
    main()
