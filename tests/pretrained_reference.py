"""Fixed small problems on which every shipped model's output is compared with the reference release.

``REFERENCE`` holds the PSNR (dB) and the output norm of each shipped model on :func:`reference_problem`, computed
for the shipped weights with (the first figures came from ``main`` at f1cd731, before the registry/baselines
refactor; regenerated when the weights were retrained)::

    OMP_NUM_THREADS=1 python tests/pretrained_reference.py

The problems use only the embedded Colin27 test slices (shipped with the package, so the figures do not depend
on whether the real head CT is installed), the task's default physics at 64 x 64, and seeded noise of relative
level 1e-2 drawn here (independent of the task's noise model).
"""

from __future__ import annotations

import torch

TASKS = ("mri-radial-4x", "ct-sparse-view")
SLICES = (8, 24)  # indices in the embedded test split
SIZE = 64


def reference_problem(task_name: str, size: int = SIZE):
    """``(physics, x, y)``: two embedded test slices at ``size`` x ``size`` (64 for the reference figures),
    measurements with seeded 1 % noise."""
    from deepinv_mol.data import load_embedded, resize_images
    from deepinv_mol.tasks import get_task

    task = get_task(task_name)
    mag = resize_images(load_embedded("test").images[list(SLICES)], (size, size)).clamp(0, 1)
    if task.channels == 2:
        x = torch.stack([mag, torch.zeros_like(mag)], dim=1)
    else:
        x = mag.unsqueeze(1)
    physics = task.build_physics(tuple(x.shape[1:]), "cpu", None)
    with torch.no_grad():
        clean = physics.A(x)
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=clean.dtype)
        rms = clean.abs().pow(2).mean(dim=tuple(range(1, clean.dim())), keepdim=True).sqrt()
        y = clean + 1e-2 * rms * noise
    return physics, x, y


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> list[float]:
    """PSNR (dB, peak 1) per batch item, of the magnitude for 2-channel (complex) images."""
    if x.shape[1] == 2:
        x_hat, x = x_hat.pow(2).sum(1).sqrt(), x.pow(2).sum(1).sqrt()
    mse = (x_hat - x).pow(2).flatten(1).mean(1)
    return [float(v) for v in -10 * torch.log10(mse)]


#: PSNR (dB) and output norm per image of each shipped model on the reference problems (the plain map,
#: ``scale_equivariant=False``), computed with ``python tests/pretrained_reference.py`` for the weights of the
#: second retraining round of 2026-12-03 (scripts/train_pretrained.sh, MRI with ground-truth noise augmentation, CT
#: 400 steps; then scripts/converge_shipped_vectors.py; the figures of the earliest weights were those of main at
#: f1cd731): a change of the code that changes what a shipped model computes fails the test
REFERENCE: dict = {
    "mri-radial-4x/luser": {"psnr": [35.6887, 34.4789], "norm": [16.88693, 12.77605]},
    "mri-radial-4x/modl": {"psnr": [37.5674, 35.9832], "norm": [16.94326, 12.8267]},
    "mri-radial-4x/mol-penalty": {"psnr": [34.7068, 33.7549], "norm": [16.70668, 12.58569]},
    "mri-radial-4x/mol-strict": {"psnr": [34.5831, 33.4801], "norm": [16.68278, 12.58822]},
    "ct-sparse-view/luser": {"psnr": [35.305, 36.6476], "norm": [16.99648, 12.88297]},
    "ct-sparse-view/modl": {"psnr": [34.6624, 34.7266], "norm": [16.95992, 12.83888]},
    "ct-sparse-view/mol-penalty": {"psnr": [34.4453, 34.9903], "norm": [16.74999, 12.64673]},
    "ct-sparse-view/mol-strict": {"psnr": [35.0172, 35.2534], "norm": [16.85493, 12.74917]},
}


if __name__ == "__main__":
    import json

    from deepinv_mol.pretrained import available_pretrained, load_pretrained

    torch.set_num_threads(1)
    out = {}
    for task in TASKS:
        physics, x, y = reference_problem(task)
        for t, name in available_pretrained():
            if t != task:
                continue
            model = load_pretrained(name, task)
            model.scale_equivariant = False  # the reference is the plain map, as tests/test_pretrained.py checks it
            with torch.no_grad():
                x_hat = model(y, physics)
            norms = x_hat.flatten(1).norm(dim=1)
            out[f"{task}/{name}"] = {"psnr": [round(v, 4) for v in psnr(x_hat, x)],
                                     "norm": [float(f"{float(v):.7g}") for v in norms]}
            print(f"{task}/{name}", out[f"{task}/{name}"], flush=True)
    print(json.dumps(out, indent=1))
