r"""
Your own images in a deepinv pipeline: MOL, LUSER and MoDL with deepinv's Trainer
==================================================================================

Most users meet this package with a stack of their own images and a deepinv workflow already in
mind: build a dataset, pick a forward operator, train a few reconstruction networks with
:class:`deepinv.Trainer`, compare them with :func:`deepinv.test`. This tutorial does exactly that,
with nothing but deepinv's own tools around the three models of this package:

1. *your images*: any ``(N, H, W)`` tensor in [0, 1] (here real brain MRI slices shipped with the package
   stand in for them) becomes complex MRI images with :meth:`deepinv_mol.tasks.Task.dataset_from`;
2. *the physics*: :class:`deepinv_mol.physics.NufftMRI`, 8-coil golden-angle radial MRI, 4x
   undersampled, 30 dB noise, from the task registry (:func:`deepinv_mol.tasks.get_task`);
3. *a deepinv dataset*: measurements simulated once with :func:`deepinv.datasets.generate_dataset`
   and read back with :class:`deepinv.datasets.HDF5Dataset`, so that every model sees the same noise;
4. *three models*: :class:`deepinv_mol.optim.MOL` (penalty variant) and deepinv's own
   :class:`deepinv.models.MoDL` (as :class:`deepinv_mol.optim.baselines.MoDLBaseline`) with the *same*
   CNN, :class:`deepinv_mol.models.MonotoneCNN`, and :class:`deepinv_mol.optim.LUSER`;
5. *training* with :class:`deepinv.Trainer` and *testing* with :func:`deepinv.test` (PSNR and SSIM);
6. what MOL's statistics and guarantees say about the reconstructions.

Everything is small (64 x 64 images, 24 Adam steps per model) so that it runs on a laptop CPU in a few
minutes: the numbers show the pipeline, not the methods' final quality. The results of longer
trainings at full size are on the :doc:`benchmarks page </benchmarks>`, and ready-trained weights
for the full-size task are one call away (:func:`deepinv_mol.load_pretrained`).
"""

# %%
import tempfile
import time
from pathlib import Path

import deepinv as dinv
import torch

from deepinv_mol.data import load_embedded, resize_images
from deepinv_mol.guarantees import certify, estimate_lipschitz
from deepinv_mol.loss import LipschitzPenalty
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import LUSER, MOL
from deepinv_mol.optim.baselines import CGReconstruction, MoDLBaseline
from deepinv_mol.tasks import get_task

torch.manual_seed(0)
size = 64  # image side: 64 x 64 keeps every step under a few seconds on a CPU
epochs = 2  # 12 batches of 2 images per epoch: 24 Adam steps per model
workdir = Path(tempfile.mkdtemp(prefix="deepinv_mol_own_images_"))

# %%
# 1. Your images
# --------------
# All the pipeline needs is a float tensor ``(N, H, W)`` of magnitude images in [0, 1] (or ``(N, 2, H, W)``
# complex images as real and imaginary channels). If yours are in a ``.npy`` file,
# :func:`deepinv_mol.data.load_image_stack` reads and checks them. Here 24 training and 8 test slices of
# the Colin27 T1 brain template that ship with the package (``deepinv_mol/assets/colin27_t1_slices.npz``,
# read by :func:`deepinv_mol.data.load_embedded`) play the part of your images; training and test slices
# come from different parts of the head.

my_train_images = resize_images(load_embedded("train").images[::3], (size, size))
my_test_images = resize_images(load_embedded("test").images[::4], (size, size))
print(f"training images {tuple(my_train_images.shape)}, test images {tuple(my_test_images.shape)}, "
      f"values in [{my_train_images.min():.2f}, {my_train_images.max():.2f}]")

# %%
# 2. The physics
# --------------
# The task registry holds the physics, the noise and the data conventions of each experiment of the
# package. ``mri-radial-4x`` is multi-coil golden-angle radial MRI through a NUFFT
# (:class:`deepinv_mol.physics.NufftMRI`, a :class:`deepinv.physics.LinearPhysics`): 8 coils, 4x fewer
# spokes than Nyquist, Gaussian noise at a 30 dB measurement SNR. ``build_physics`` sizes it for your
# images and installs the noise model, so ``physics(x)`` returns noisy measurements as any deepinv
# physics does. You can also build ``NufftMRI(trajectory, (H, W), coil_maps=...)`` yourself from
# :func:`deepinv_mol.physics.radial_trajectory`.

task = get_task("mri-radial-4x")
physics = task.build_physics((2, size, size))
print(physics.__class__.__name__, "measurements per image:", tuple(physics.A(torch.zeros(1, 2, size, size)).shape[1:]))

# %%
# 3. A deepinv dataset
# --------------------
# MRI images are complex: :meth:`~deepinv_mol.tasks.Task.dataset_from` turns magnitudes into ``(2, H, W)``
# images (real and imaginary channels, deepinv's convention) with a smooth simulated phase, seeded per
# image. :func:`deepinv.datasets.generate_dataset` then simulates the measurements once and stores the
# pairs ``(x, y)`` in an HDF5 file that :class:`deepinv.datasets.HDF5Dataset` reads. Stored measurements
# mean that all three models train and are tested on the same noisy data (``online_measurements=True`` in
# the Trainer would draw new noise at each step instead).

path = dinv.datasets.generate_dataset(
    train_dataset=task.dataset_from(my_train_images, seed=0),
    test_dataset=task.dataset_from(my_test_images, seed=1),
    physics=physics,
    save_dir=workdir / "data",
    verbose=False,
)
train_set = dinv.datasets.HDF5Dataset(path, train=True, use_dict_output=True)
test_set = dinv.datasets.HDF5Dataset(path, train=False, use_dict_output=True)
train_loader = torch.utils.data.DataLoader(train_set, batch_size=2, shuffle=True,
                                           generator=torch.Generator().manual_seed(0))
test_loader = torch.utils.data.DataLoader(test_set, batch_size=4)

# %%
# 4. Three models, one CNN
# ------------------------
# MOL and MoDL get the *same* network: a 5-layer 3 x 3 CNN of width 16
# (:class:`~deepinv_mol.models.MonotoneCNN`), each its own copy. ``init="identity"`` starts it as
# :math:`H(x) = 0.9\,x` (so both algorithms start as a mildly regularised least-squares solve; from a
# random map a 5-layer network needs thousands of steps to become the near-identity they need), and
# ``lipschitz=0.9`` is its Lipschitz constant at the start (the shipped models use 0.99: closer to the
# identity, but MOL then needs more iterations per solve).
#
# * **MOL** (penalty variant) returns the fixed point :math:`x^\star` of
#   :math:`x - H_\theta(x) + \lambda A^H(Ax - y) = 0`, iterated to a tolerance (Anderson-accelerated) and
#   trained through the fixed point by implicit differentiation: memory does not grow with the number of
#   iterations. ``constraint="penalty"`` leaves the CNN unconstrained; a
#   :class:`~deepinv_mol.loss.LipschitzPenalty` in the losses keeps its local Lipschitz constant below 1
#   (``constraint="strict"`` instead certifies it, at some cost in PSNR).
# * **MoDL** is deepinv's :class:`deepinv.models.MoDL`: 5 unrolled layers
#   :math:`x_{k+1} = (I + \gamma_k A^HA)^{-1}(D(x_k) + \gamma_k A^H y)`, backpropagated through all of them.
#   :class:`~deepinv_mol.optim.baselines.MoDLBaseline` *is* a deepinv ``MoDL`` (same parameters and
#   ``state_dict``) with three explicit changes: the start image is MOL's (a few CG iterations instead of
#   :math:`A^Hy`, which is off by the scale of :math:`A^HA`), the data steps start at the task's data weight
#   instead of 1, and they are kept positive.
# * **LUSER** unrolls 3 steps whose regularizers are *shallow* deep-equilibrium networks
#   (:class:`~deepinv_mol.models.ShallowEquilibrium`, two convolutions iterated to a fixed point): its own
#   architecture, not the CNN above.
#
# All three are :class:`deepinv.models.Reconstructor`: ``x_hat = model(y, physics)``.


def cnn():
    return MonotoneCNN(channels=2, width=16, depth=5, constraint="penalty", init="identity", lipschitz=0.9)


weight = task.data_weight  # the initial data weight suited to this operator's scale (see Task)
models = {
    # backward tolerances loosened for a short CPU run: the defaults (1e-5 for the adjoint fixed point, 1e-6 for
    # its CG solves) made one training step about 3x slower here
    "MOL": MOL(denoiser=cnn(), lambda_=weight, max_iter=50, tol=1e-3,
               backward=dict(tol=1e-4), data_consistency=dict(backward_tol=1e-4)),
    "MoDL": MoDLBaseline(denoiser=cnn(), num_iter=5, stepsize=weight),
    "LUSER": LUSER(num_iter=3, channels=2, regularizer_kwargs=dict(width=16)),
}
print("MoDL is deepinv's MoDL:", isinstance(models["MoDL"], dinv.models.MoDL))
for name, model in models.items():
    print(f"{name:5s} {sum(p.numel() for p in model.parameters()):6d} parameters")

# %%
# 5. Training with deepinv.Trainer
# --------------------------------
# One call per model, the same data, optimiser and number of steps. MOL's losses add the Lipschitz
# penalty to the supervised loss (it estimates :math:`\|\partial H_\theta(\hat x)\|_2` at the
# reconstruction by a few power iterations; a log-barrier that rises steeply as it approaches 0.98). The Trainer
# saves a checkpoint per epoch under ``save_path``; it holds only tensors and numbers, so it reads back
# with ``torch.load(..., weights_only=True)``.

metrics = [dinv.metric.PSNR(complex_abs=True), dinv.metric.SSIM(complex_abs=True)]
losses = {
    "MOL": [dinv.loss.SupLoss(), LipschitzPenalty(weight=1e-4, reduced_batchsize=1)],
    "MoDL": dinv.loss.SupLoss(),
    "LUSER": dinv.loss.SupLoss(),
}
train_seconds = {}
for name, model in models.items():
    trainer = dinv.Trainer(
        model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        train_dataloader=train_loader,
        epochs=epochs,
        losses=losses[name],
        metrics=metrics,
        online_measurements=False,
        save_path=workdir / name,
        device="cpu",
        compute_train_metrics=False,
        non_blocking_transfers=False,
        verbose=False,
        show_progress_bar=False,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds[name] = time.perf_counter() - start
    print(f"{name:5s} trained in {train_seconds[name]:5.1f} s")

checkpoint = next((workdir / "MOL").rglob(f"ckp_{epochs - 1}.pth.tar"))
state = torch.load(checkpoint, map_location="cpu", weights_only=True)
print(f"checkpoint {checkpoint.name}: epoch {state['epoch']}, {len(state['state_dict'])} tensors")

# %%
# 6. Testing with deepinv.test
# ----------------------------
# :func:`deepinv.test` runs each model on the test set and averages the metrics over images. Its
# "no learning" reference defaults to :math:`A^Hy`, which for an unnormalised NUFFT is off in scale by
# :math:`\|A\|^2` (negative PSNR); :class:`~deepinv_mol.optim.baselines.CGReconstruction` (conjugate
# gradient on the regularised normal equations) is the fair non-learned reference.

results = {}
for name, model in models.items():
    start = time.perf_counter()
    results[name] = dinv.test(model, test_loader, physics, metrics=metrics, device="cpu",
                              no_learning_method=CGReconstruction(), non_blocking_transfers=False,
                              verbose=False, show_progress_bar=False)
    results[name]["seconds"] = time.perf_counter() - start
reference = {"PSNR": results["MOL"]["PSNR no learning"], "SSIM": results["MOL"]["SSIM no learning"]}

print(f"{'model':24s} {'PSNR (dB)':>10s} {'SSIM':>7s} {'train (s)':>10s} {'test (s)':>9s}")
print(f"{'CG (no learning)':24s} {reference['PSNR']:10.2f} {reference['SSIM']:7.3f} {'-':>10s} {'-':>9s}")
for name, r in results.items():
    print(f"{name:24s} {r['PSNR']:10.2f} {r['SSIM']:7.3f} {train_seconds[name]:10.1f} {r['seconds']:9.1f}")

# %%
# 7. What MOL's statistics and guarantees say
# -------------------------------------------
# After every call ``model.stats`` says what the solve did: ``iterations`` (evaluations of the MOL step),
# ``equation_residual`` (:math:`\|x - H_\theta(x) + \lambda A^H(Ax - y)\| / \|x\|` at the returned image,
# the worst over the batch) and ``converged`` (that residual is below ``tol``). A solve that does not
# converge also raises a ``RuntimeWarning``: nothing fails silently.
#
# The guarantees rest on :math:`L = \mathrm{Lip}(H_\theta) < 1`: then :math:`F = I - H_\theta` is
# :math:`m`-monotone with :math:`m = 1 - L`, the fixed point exists and is unique, the iteration converges
# to it, the returned image is within ``equation_residual``:math:`/m` of it, and the reconstruction moves at
# most :math:`\sqrt{\lambda/(4m)}` times as much as the measurements. The *penalty* network has no
# certificate: :func:`~deepinv_mol.guarantees.certify` says so, and
# :func:`~deepinv_mol.guarantees.estimate_lipschitz` measures :math:`L` locally, at the reconstructions
# (a lower bound of the global constant). A *strict* network (``MonotoneCNN(constraint="strict")``) makes
# :func:`~deepinv_mol.guarantees.certify` prove all of it: see :ref:`the guarantees tutorial
# <sphx_glr_auto_examples_demo_guarantees.py>`.

mol = models["MOL"].eval()
x_test, y_test = (torch.stack([test_set[i][k] for i in range(len(test_set))]) for k in "xy")
with torch.no_grad():
    x_mol = mol(y_test, physics)
print({k: mol.stats[k] for k in ("iterations", "equation_residual", "converged")})
local = estimate_lipschitz(mol.denoiser, x_mol, n_iter=50, warn=False)
print(f"local Lipschitz estimate of H at the reconstructions: {local.value:.3f} (< 1: locally monotone)")
report = certify(mol, physics, x=x_test[:1])
print("certified for the penalty network:", report.holds, "-", report.reasons[0] if report.reasons else "")

# %%
# 8. A look at one test image
# ---------------------------
# :func:`deepinv.utils.plot` shows the magnitude of complex ``(B, 2, H, W)`` images.

with torch.no_grad():
    images = [x_test[:1], CGReconstruction()(y_test[:1], physics)]
    images += [model.eval()(y_test[:1], physics) for model in models.values()]
dinv.utils.plot(images, titles=["ground truth", "CG", *models], figsize=(12, 3))

# %%
# What the numbers say
# --------------------
# One run of this script (single thread, about 4 minutes of CPU time in all) gave, on the 8 test images:
# CG 31.1 dB, MOL 34.5 dB, LUSER 34.6 dB, MoDL 31.8 dB; MOL's test solves converged in 6 iterations, with
# a local Lipschitz estimate of 0.82. 24 steps are far too few to rank the methods: MoDL backpropagates
# through every unrolled layer and its first Adam steps move it *away* from its starting point (in a
# shorter run it fell below CG before recovering), while MOL and LUSER start from a converged equilibrium
# and improve steadily. Compare them at their trained best on the benchmarks page.
#
# Where to go next
# ----------------
# * More steps and the full 160 x 160 images: ``deepinv-mol train --task mri-radial-4x --model mol-penalty``
#   (the package's resumable training loop), or the same ``Trainer`` call as above on your data.
# * Weights trained on the full-size task: ``deepinv_mol.load_pretrained("mol-penalty", "mri-radial-4x")``.
# * Speed, memory, robustness and convergence of all models at realistic sizes: the
#   :doc:`benchmarks page </benchmarks>` (``deepinv-mol bench all --out DIR`` regenerates it).
# * Certificates and worst-case perturbations: :mod:`deepinv_mol.guarantees` and the guarantees tutorial.
