r"""
LUSER: unrolled reconstruction with shallow equilibrium regularizers
====================================================================

:class:`deepinv_mol.optim.LUSER` (Guan, Jin, Romberg, Davenport, arXiv 2210.04987) unrolls
:math:`K` steps

.. math::

    x_{k+1} = R_k\big(x_k - \eta_k A^H (A x_k - y)\big),

where each regularizer :math:`R_k` is a *shallow* deep-equilibrium network
(:class:`deepinv_mol.models.ShallowEquilibrium`): :math:`R(v) = v + C z^\star` with
:math:`z^\star = f(z^\star, v)` for a two-convolution network :math:`f`, found by Anderson
acceleration and differentiated implicitly. Iterating a shallow network to its fixed point makes it as
deep as needed, while training keeps the activations of *one* evaluation only.

Its twin :class:`deepinv_mol.optim.UnrolledFeedForward` is the same loop with deepinv's DnCNN as
regularizer. This tutorial trains both briefly on a small deblurring problem with real brain MRI
slices, compares the memory they keep for backpropagation and their PSNR, and reads the inner solver
statistics. Everything is small so that it runs on a CPU in a minute or two.
"""

# %%
import deepinv as dinv
import matplotlib.pyplot as plt
import torch

from deepinv_mol.bench.memory import saved_tensors_memory
from deepinv_mol.data import load_embedded, resize_images
from deepinv_mol.optim import LUSER, UnrolledFeedForward

torch.manual_seed(0)
size = 48
train = resize_images(load_embedded("train").images, (size, size)).unsqueeze(1).clamp(0, 1)
test = resize_images(load_embedded("test").images[::8], (size, size)).unsqueeze(1).clamp(0, 1)

physics = dinv.physics.Blur(dinv.physics.functional.gaussian_blur(sigma=(1.5, 1.5)), padding="circular")
physics.noise_model = dinv.physics.GaussianNoise(sigma=0.01)
y_test = physics(test)
psnr = dinv.metric.PSNR(max_pixel=1.0)

# %%
# Two models, one loop
# --------------------
# Same number of unrolled steps, same width, learnable step sizes initialised at :math:`1/\|A\|^2`.
# The shallow equilibrium network has 2 convolutions (5 x 5) on its hidden path, normalised so that
# :math:`f` is a contraction (:math:`\mathrm{Lip}_z f \le 0.9`); the twin's DnCNN has 12 layers (3 x 3).
# Larger kernels cost LUSER no training memory (it keeps activations, not kernels).

luser = LUSER(num_iter=3, channels=1, step_size="auto",
              regularizer_kwargs=dict(width=16, kernel_size=5, max_iter=30, tol=1e-3))
twin = UnrolledFeedForward(num_iter=3, channels=1, step_size="auto",
                           regularizer_kwargs=dict(width=16, depth=12))
print(f"certified Lip_z(f) of LUSER's first regularizer: {luser.regularizer(0).lipschitz_bound():.3f}")

# %%
# Memory kept for backpropagation
# -------------------------------
# :func:`deepinv_mol.bench.memory.saved_tensors_memory` counts the tensors autograd saves during one
# training step. LUSER's count does not depend on how many inner iterations the equilibrium took.

for name, model in (("LUSER", luser), ("feed-forward twin", twin)):
    m = saved_tensors_memory(model, y_test[:4], physics, test[:4])
    print(f"{name:18s} saves {m['saved_bytes'] / 2**20:6.2f} MiB in {m['saved_count']} tensors")

# %%
# Equal training budget
# ---------------------
# Both models see the same batches for the same number of Adam steps.


def fit(model, steps=60, batch=4, lr=2e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = train[torch.randint(len(train), (batch,), generator=gen)]
        loss = torch.nn.functional.mse_loss(model(physics(x), physics), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(y_test, physics)


x_luser = fit(luser)
stats = luser.stats
print("LUSER inner iterations per unrolled step:", stats["iterations_per_step"],
      f"(worst residual {stats['residual']:.1e}, converged: {stats['converged']})")
x_twin = fit(twin)
x_adj = physics.A_adjoint(y_test)
for name, x_hat in (("blurred A^H y", x_adj), ("LUSER", x_luser), ("feed-forward twin", x_twin)):
    print(f"{name:18s} {psnr(x_hat, test).mean().item():5.2f} dB")

# %%
# A look at one test slice
# ------------------------

fig, axes = plt.subplots(1, 4, figsize=(10, 3))
for ax, (title, img) in zip(axes, (("ground truth", test), ("A^H y", x_adj), ("LUSER", x_luser),
                                   ("feed-forward twin", x_twin))):
    ax.imshow(img[0, 0].clamp(0, 1), cmap="gray")
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %%
# What to take away
# -----------------
# * The equilibrium regularizer keeps the activations of one shallow evaluation per unrolled step; the
#   feed-forward twin keeps every layer. ``deepinv_mol.bench.luser.bench_luser_memory`` measures the
#   ratio at 256 x 256 on deblurring, CT and MRI (``deepinv-mol bench luser``).
# * ``model.stats`` reports the inner solves (iterations, residual, convergence; backward counterparts
#   after a backward pass). An inner solve that does not converge emits a ``RuntimeWarning``.
# * 60 steps on 48 x 48 images are far from convergence: use
#   ``deepinv_mol.bench.luser.bench_luser_quality`` (``deepinv-mol bench luser-quality``) for a longer
#   equal-budget comparison.
