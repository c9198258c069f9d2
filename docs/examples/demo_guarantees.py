r"""
Guarantees you can check: certified Lipschitz bounds, certificates and worst-case perturbations
===============================================================================================

MOL's theory rests on one number: the Lipschitz constant of its network :math:`H_\theta`. If
:math:`\mathrm{Lip}(H_\theta) \le L < 1`, the score :math:`F = I - H_\theta` is :math:`(1 - L)`-monotone, the
reconstruction is unique, MOL's iteration contracts, and the reconstruction is Lipschitz in the
measurements (:doc:`../theory`). This tutorial computes each of these:

* a *certified* bound of :math:`\mathrm{Lip}(H_\theta)` for a strict
  :class:`deepinv_mol.models.MonotoneCNN` (:meth:`~deepinv_mol.models.MonotoneCNN.lipschitz_bound`), against
  local estimates (:func:`deepinv_mol.guarantees.estimate_lipschitz`);
* the guarantee report of a MOL model (:func:`deepinv_mol.guarantees.certify`);
* the worst measurement perturbation found by gradient ascent
  (:func:`deepinv_mol.guarantees.worst_case_perturbation`) for MOL and deepinv's
  :class:`~deepinv.models.MoDL` with the same network;
* the penalty variant, which has no certificate, and its training penalty
  :class:`deepinv_mol.loss.LipschitzPenalty`.
"""

# %%
import deepinv as dinv
import matplotlib.pyplot as plt
import torch

from deepinv_mol.guarantees import certify, estimate_lipschitz, worst_case_perturbation
from deepinv_mol.loss import LipschitzPenalty
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL
from deepinv_mol.tasks import get_task
from deepinv_mol.data import image_of

torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
size = 32
# the registry's mri-radial-4x task in a small variant: size x size images, 8-coil radial NUFFT, 30 dB
task = get_task("mri-radial-4x", size=size)
test = task.dataset("test")
x = torch.stack([image_of(test[i]) for i in range(2)])  # complex images (B, 2, H, W) with a smooth phase

# %%
# A certified bound, and how far random weights sit below it
# ------------------------------------------------------------
# Each convolution of a strict network is divided by its operator norm *as a convolution*. In evaluation
# mode that norm is the certified one (a rigorous upper bound valid for every image size, computed from
# the kernel's frequency response), so the bound is the target ``lipschitz`` itself.

net = MonotoneCNN(width=16, depth=5, lipschitz=0.95).eval()
print(f"certified bound          : {net.lipschitz_bound():.4f}")
print("per-layer certified norms:", [f"{b:.4f}" for b in net.layer_norm_bounds()])
local = estimate_lipschitz(net, x, n_iter=100, warn=False)
print(f"local estimate at images : {local.value:.4f} ({local.iterations} power iterations)")
print(f"product of layer norms bounds it: {local.value <= net.lipschitz_bound()}")

# %%
# Random weights are far below the product of layer norms, so they say little about the bound. A
# network with non-negative kernels acting on non-negative images is linear and nearly attains it:

tight = MonotoneCNN.nearly_extremal(width=16, depth=5, lipschitz=0.95, generator=g).eval()
est = estimate_lipschitz(tight, x.abs() + 0.1, n_iter=200, warn=False)
print(f"nearly extremal network: bound {tight.lipschitz_bound():.4f}, local estimate {est.value:.4f}")

# %%
# The guarantee report of a MOL model
# -----------------------------------

physics = task.build_physics(tuple(x.shape[1:]))
y = task.simulate(x, physics, g)

mol = MOL(denoiser=net, lambda_=10.0, alpha=1.0, tol=1e-6).eval()
report = certify(mol, physics, x)
print(report)

# %%
# And what it says when a guarantee does not hold: a score step :math:`\alpha` beyond the range, or an
# unconstrained (penalty) network.

print(certify(MOL(denoiser=net, lambda_=10.0, alpha=2.5)))
print(certify(MOL(denoiser=MonotoneCNN(width=16, constraint="penalty"), lambda_=10.0)))

# %%
# Worst-case measurement perturbations: MOL vs MoDL
# -------------------------------------------------
# Projected gradient ascent on :math:`\delta`, :math:`\|\delta\| \le \epsilon`, maximising
# :math:`\|x(y + \delta) - x(y)\|`. We use the nearly extremal network, whose gain is close to its bound.
# MOL's amplification is certified; deepinv's MoDL (ten unrolled iterations) with the same network has no
# certificate, and with a steeper, unconstrained network nothing keeps its amplification in check.

mol = MOL(denoiser=tight, lambda_=10.0, alpha=1.0, tol=1e-6).eval()
report = certify(mol, physics, x)
steep = MonotoneCNN(width=16, depth=5, constraint="penalty").eval()
with torch.no_grad():
    for conv in steep.convs:
        conv.weight.mul_(2.0)
eps = 0.05 * float(y[:1].norm())
results = {
    "MOL (strict)": worst_case_perturbation(mol, physics, y[:1], eps=eps, steps=10, generator=g),
    "MoDL (same network)": worst_case_perturbation(
        dinv.models.MoDL(denoiser=tight, num_iter=10).eval(), physics, y[:1], eps=eps, steps=10, generator=g
    ),
    "MoDL (steep network)": worst_case_perturbation(
        dinv.models.MoDL(denoiser=steep, num_iter=10).eval(), physics, y[:1], eps=eps, steps=10, generator=g
    ),
}
# The certified bound min(lambda |A| / m, sqrt(lambda / (4 m))) holds for every operator with these lambda, m
# and |A|; a particular operator and image usually stay well below it.
print(f"MOL certified robustness bound: {report.robustness_bound:.3f}")
for name, wc in results.items():
    print(f"worst amplification ||dx||/||dy||, {name:<21}: {wc.value:.3f}")
wc_mol = results["MOL (strict)"]

# %%
# The certificate caps MOL's amplification (here well below it); it is not a comparison with other methods.
# In this small example MOL's worst case is even *larger* than MoDL's: deepinv's MoDL runs with its default
# data step 1 while MOL weighs the data with :math:`\lambda = 10`, and a heavier data weight lets measurement
# perturbations through more (the bound :math:`\sqrt{\lambda/(4m)}` grows with it too). A converged MoDL
# solves an equation of MOL's form with its own network, so only its network and data weight set it apart.
# The shipped models at realistic sizes (where MoDL's unconstrained network is the more sensitive on MRI),
# and where the certificate's slack goes, are measured on the :doc:`../benchmarks` page.

with torch.no_grad():
    change = (mol(y[:1] + wc_mol.delta, physics) - mol(y[:1], physics))[0].norm(dim=0)
fig, ax = plt.subplots(1, 3, figsize=(10, 4.2))
ax[0].imshow(x[0].norm(dim=0), cmap="gray")
ax[0].set_title("ground truth")
for name, wc in results.items():
    ax[1].plot(wc.history, marker=".", label=name)
ax[1].axhline(report.robustness_bound, ls="--", c="k", lw=1.5,
              label=f"MOL certified bound ({report.robustness_bound:.2f})")
ax[1].set_xlabel("ascent step")
ax[1].set_yscale("log")
# room above the bound, and the legend below the panel: nothing covers the bound's line
lowest = min(min(wc.history) for wc in results.values())
ax[1].set_ylim(0.5 * min(lowest, report.robustness_bound), 2.0 * max(report.robustness_bound, *(
    max(wc.history) for wc in results.values())))
ax[1].set_title("amplification ||dx|| / ||dy||")
ax[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=1, frameon=False)
ax[2].imshow(change, cmap="magma")
ax[2].set_title("MOL: worst reconstruction change")
for a in (ax[0], ax[2]):
    a.axis("off")
plt.tight_layout()
plt.show()

# %%
# The penalty variant: no certificate, a penalty instead
# ------------------------------------------------------
# An unconstrained network is trained with :class:`~deepinv_mol.loss.LipschitzPenalty`, a log-barrier on
# the local Lipschitz estimate at the reconstruction (linear beyond the threshold). A few optimiser steps
# on the penalty alone pull an overly steep network back under the threshold.

free = MonotoneCNN(width=16, depth=5, constraint="penalty")
with torch.no_grad():
    for conv in free.convs:
        conv.weight.mul_(3.0)
penalty = LipschitzPenalty(network=free, threshold=0.98)
opt = torch.optim.Adam(free.parameters(), lr=1e-2)
for step in range(41):
    opt.zero_grad()
    loss = penalty(x_net=x).mean()
    loss.backward()
    opt.step()
    if step % 10 == 0:
        print(f"step {step:2d}: local Lipschitz estimate {penalty.stats['value']:.3f}, penalty {loss.item():.2f}")
