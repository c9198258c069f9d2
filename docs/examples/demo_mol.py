r"""
MOL: a deep-equilibrium MRI reconstruction with a monotone learned score
========================================================================

:class:`deepinv_mol.optim.MOL` (Pramanik, Zimmerman, Jacob, IEEE TCI 2023) reconstructs the solution of

.. math::

    x - H_\theta(x) + \lambda A^H(Ax - y) = 0

by iterating :math:`z = (1-\alpha)x + \alpha H_\theta(x)`, :math:`x^+ = (I + \alpha\lambda A^HA)^{-1}(z +
\alpha\lambda A^Hy)` to its fixed point. With a network whose Lipschitz constant is certified below 1
(a *strict* :class:`deepinv_mol.models.MonotoneCNN`) the fixed point exists, is unique and the
iteration converges. Training differentiates implicitly through the fixed point
(:mod:`deepinv_mol.equilibrium`), so memory does not grow with the number of iterations.

This tutorial, small enough for a CPU, shows the iteration count with and without Anderson
acceleration, uniqueness of the fixed point, a short training run with :class:`deepinv.Trainer`, the
memory kept for backpropagation compared with deepinv's :class:`~deepinv.models.MoDL`, and the
guarantee report.
"""

# %%
import deepinv as dinv
import matplotlib.pyplot as plt
import torch

from deepinv_mol.bench.memory import saved_tensors_memory
from deepinv_mol.guarantees import certify
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL
from deepinv_mol.pretrained import AdjointReconstruction
from deepinv_mol.tasks import get_task
from deepinv_mol.data import image_of

torch.manual_seed(0)
size = 32

# %%
# The problem comes from the task registry: ``mri-radial-4x`` (8-coil golden-angle radial NUFFT, 4x fewer
# spokes than Nyquist, 30 dB noise) in a small variant, ``size`` x ``size`` images, small enough for a CPU.
task = get_task("mri-radial-4x", size=size)


def complex_images(split, step=1):
    """Real brain slices with a smooth simulated phase, complex images (B, 2, H, W)."""
    data = task.dataset(split)
    return torch.stack([image_of(data[i]) for i in range(0, len(data), step)])


train, test = complex_images("train", step=3), complex_images("test", step=8)

physics = task.build_physics((2, size, size))  # the task's noise model is installed: physics(x) adds it
y_test = task.simulate(test, physics, torch.Generator().manual_seed(0))

# %%
# The fixed point and how fast we reach it
# ----------------------------------------
# The fixed point does not depend on the score step :math:`\alpha`, only the speed does. MOL's
# statistics say how many iterations each reconstruction took and whether it converged.

net = MonotoneCNN(width=16, depth=5, constraint="strict", lipschitz=0.99)
for alpha in (1.0, 0.1):
    for anderson in (0, 5):
        model = MOL(net, lambda_=10.0, alpha=alpha, anderson=anderson, max_iter=500)
        with torch.no_grad():
            model(y_test, physics)
        s = model.stats
        print(f"alpha={alpha:<4} anderson={anderson}: {s['iterations']:3d} iterations, "
              f"residual {s['residual']:.1e}, converged={s['converged']}")

# %%
# Uniqueness: any start leads to the same point.

model = MOL(net, lambda_=10.0, tol=1e-5)
with torch.no_grad():
    x_a = model(y_test, physics)
    x_b = model(y_test, physics, init=torch.randn_like(x_a))
print(f"relative difference between two starts: {float((x_a - x_b).norm() / x_a.norm()):.1e}")

# %%
# Training with deepinv's Trainer
# -------------------------------
# The implicit backward solves an adjoint fixed point; its statistics appear in ``model.stats`` after
# the backward pass. A few epochs on a few images are enough to see the loss fall.


class Images(torch.utils.data.Dataset):
    def __init__(self, xs):
        self.xs = xs

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i]


model = MOL(MonotoneCNN(width=16, depth=5, constraint="strict"), lambda_=10.0, max_iter=50)
psnr = dinv.metric.PSNR(max_pixel=1.0, complex_abs=True)


def mean_psnr(model):
    with torch.no_grad():
        return float(psnr(model(y_test, physics), test).mean())


zero_filled = AdjointReconstruction()  # A^H y rescaled from the measurements (A^H y is not in image units)
print(f"zero-filled PSNR: {float(psnr(zero_filled(y_test, physics), test).mean()):.2f} dB")
print(f"MOL before training: {mean_psnr(model):.2f} dB")
trainer = dinv.Trainer(
    model, physics, torch.optim.Adam(model.parameters(), lr=2e-3),
    torch.utils.data.DataLoader(Images(train), batch_size=4, shuffle=True), epochs=3,
    online_measurements=True, save_path=None, verbose=False, show_progress_bar=False,
    compute_train_metrics=False, metrics=[],
)
model = trainer.train()
print(f"statistics of the last training step: {model.stats}")
print(f"MOL after training : {mean_psnr(model):.2f} dB")

# %%
# Memory kept for backpropagation
# -------------------------------
# Bytes of the tensors autograd saves during one training step, MOL (10 iterations) against MoDL
# (10 unrolled iterations) with the same CNN. ``deepinv_mol.bench.memory.bench_mol_vs_modl`` runs the
# same comparison at 256 x 256 and also measures peak memory.

cnn = MonotoneCNN(width=16, depth=5, constraint="strict")
mol_mem = saved_tensors_memory(MOL(cnn, lambda_=10.0, tol=0.0, max_iter=10, warn=False), y_test, physics, test)
modl_mem = saved_tensors_memory(dinv.models.MoDL(denoiser=cnn, num_iter=10), y_test, physics, test)
print(f"saved for backward: MOL {mol_mem['saved_bytes'] / 2**20:.2f} MiB, "
      f"MoDL {modl_mem['saved_bytes'] / 2**20:.2f} MiB "
      f"({modl_mem['saved_bytes'] / mol_mem['saved_bytes']:.1f}x)")

# %%
# What the theory guarantees for this model
# -----------------------------------------

model.eval()
print(certify(model, physics, x=test[:1]))

# %%
with torch.no_grad():
    x_hat = model(y_test[:1], physics)
images = [test[:1], zero_filled(y_test[:1], physics), x_hat]
titles = ["ground truth", "zero-filled", "MOL"]
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, im, title in zip(axes, images, titles):
    ax.imshow(im[0].norm(dim=0), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
plt.show()
