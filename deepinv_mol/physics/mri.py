r"""Non-Cartesian MRI on torchkbnufft: :class:`NufftMRI`."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from deepinv.physics import LinearPhysics, NoiseModel

from ._utils import is_functorch_wrapped, linear_map_function, power_iteration, refuse_if_too_large, spatial_size

__all__ = ["NufftMRI"]

_JIT_WARNING = r"`torch\.jit\.script` is deprecated"


@contextlib.contextmanager
def _quiet_torchkbnufft():
    """Silence torchkbnufft's own ``torch.jit.script`` FutureWarning (torch >= 2.14), nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_WARNING, category=FutureWarning)
        yield


def _torchkbnufft():
    with _quiet_torchkbnufft():
        import torchkbnufft

    return torchkbnufft


def _as_real_float(name: str, value, cast: bool = True) -> torch.Tensor:
    """Return ``value`` as a real (float32) tensor, with a clear TypeError for complex/integer input."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}") from err
    if value.is_complex():
        raise TypeError(f"{name} must be real (radians per voxel), got a complex tensor")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value.to(torch.float32) if cast else value


_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
#: float32 rounding of +-pi lies 8.7e-8 outside [-pi, pi]: tolerate that much (a float64 copy of a float32
#: trajectory) and fold it back
_PI_TOLERANCE = 4 * torch.finfo(torch.float32).eps * math.pi


_NufftOp = linear_map_function(
    "_NufftOp",
    r"""One of :math:`A`, :math:`A^H`, :math:`A^H A` (mode ``"A"``, ``"AH"``, ``"AHA"``) of a :class:`NufftMRI`,
    as a new-style autograd Function (``torch.func`` ready): the backward of :math:`A` is :math:`A^H` and vice
    versa, and :math:`A^H A` is self-adjoint; the forward-mode derivative of a linear map is the map itself.
    torchkbnufft's own (old-style) Functions run inside the forward only. Under ``vmap``, one call per mapped
    slice: per-batch coil maps forbid folding the mapped dimension into the batch.""",
    run=lambda t, physics, mode: physics._apply_raw(t, mode),
    adjoint_mode={"A": "AH", "AH": "A", "AHA": "AHA"}.__getitem__,
    fold_vmap=False,
)


class NufftMRI(LinearPhysics):
    r"""Non-Cartesian (multi-coil) MRI on `torchkbnufft <https://torchkbnufft.readthedocs.io>`_.

    .. math::

        y_{c,k} = \frac{1}{\sqrt{N}} \sum_{n} S_c(n)\, x(n)\, e^{-i\, \omega_k \cdot n},
        \qquad k = 1, \dots, K,\; c = 1, \dots, C,

    computed by a Kaiser-Bessel NUFFT (torchkbnufft's ``KbNufft``/``KbNufftAdjoint`` with
    ``norm="ortho"``, so that :meth:`A_adjoint` is the exact adjoint of :meth:`A` up to float32
    rounding). :math:`N` is the number of pixels (the scale is that of the unitary DFT, whatever the
    grid oversampling: torchkbnufft's ``"ortho"`` divides by the square root of the *grid* size and
    is rescaled here), pixel indices :math:`n` are centred (:math:`n_d = 0` at index
    :math:`\lfloor N_d/2 \rfloor`), :math:`\omega_k` is the trajectory in radians per voxel and
    :math:`S_c` the coil sensitivities (one coil of ones when ``coil_maps=None``).

    **Tensor layouts** (deepinv's two-channel complex convention; ``float32`` computation):

    ============  ==========================  ===================  ============================
    problem       trajectory                  image ``x``          measurements ``y``
    ============  ==========================  ===================  ============================
    2D            ``(2, K)``                  ``(B, 2, H, W)``     ``(B, 2, C, K)``
    3D            ``(3, K)``                  ``(B, 2, D, H, W)``  ``(B, 2, C, K)``
    2D + time     ``(T, 2, K)`` (per frame)   ``(B, 2, T, H, W)``  ``(B, 2, T, C, K)``
    ============  ==========================  ===================  ============================

    Dim 1 of size 2 holds the real and imaginary parts, ``C`` is the number of coils (``C = 1``
    without coil maps), trajectory row ``d`` pairs with image axis ``d`` (see
    :mod:`deepinv_mol.physics.trajectories`); every coordinate must lie in :math:`[-\pi, \pi)`.

    **Normal operator.** With ``toeplitz=True`` (default) :meth:`A_adjoint_A` applies
    :math:`A^H A` as one zero-padded FFT filter (Toeplitz embedding: torchkbnufft's
    ``calc_toeplitz_kernel`` + ``ToepNufft``): no interpolation, which is what every CG iteration
    and every ``deepinv.optim.L2`` gradient pays for. The kernel is computed once, kept as the buffer
    ``toeplitz_kernel``, and recomputed by :meth:`update_parameters` when the trajectory changes.
    ``toeplitz=False`` uses the NUFFT pair. Both agree to float32 precision (relative ~1e-5).

    **Density compensation.** :meth:`density_compensation` returns Pipe's iterative weights
    (torchkbnufft's ``calc_density_compensation_function``), computed on first use and cached
    (buffer ``density``) unless given; :meth:`gridding` is the density-compensated adjoint, and
    ``A_dagger(y, density_compensation=True)`` solves the density-weighted least-squares problem.
    Plain :meth:`A_dagger` is CG on the normal equations (deepinv's solver, Toeplitz operator).

    **Normalisation** (deepinv's convention, as :class:`deepinv.physics.Tomography`): with
    ``normalize=True`` (default) :meth:`A` and :meth:`A_adjoint` are divided by the operator norm
    :math:`\|A\|` (largest singular value of the unnormalised operator above, by power iteration once
    at construction and whenever the trajectory or coil maps change; buffer ``operator_norm``), so
    :math:`\|A\| = 1` and :math:`A^H y` is on the image's scale. ``normalize=False`` keeps the
    unitary-DFT scale of the formula above (``operator_norm`` is then 1).

    **Precision.** The operator computes in ``dtype`` (``float32`` by default; inputs are cast to it
    and outputs cast back to the input's dtype). ``.to(torch.float64)`` (or ``.double()``) turns it
    into a double-precision operator: real buffers become float64, complex ones complex128, and the
    torchkbnufft tables and Toeplitz kernel are recomputed in double precision; ``.to(torch.float32)``
    on a float32 operator changes nothing (complex buffers are never cast to a real dtype).

    Every tensor (trajectory, coil maps, kernel, density, torchkbnufft's tables) is a registered
    buffer, so ``.to(device)`` and ``state_dict`` carry the whole operator. The operators are
    ``torch.autograd.Function``\ s in the new style, so ``torch.func.grad``/``vjp``/``jvp``/``vmap``
    and :func:`deepinv.physics.forward.adjoint_function` work through them.

    :param torch.Tensor trajectory: k-space trajectory in radians, ``(2, K)``, ``(3, K)`` or
        ``(T, 2, K)`` (see the table), values in :math:`[-\pi, \pi)`.
    :param tuple img_size: spatial image size ``(H, W)`` or ``(D, H, W)`` (``(H, W)`` for 2D + time).
    :param torch.Tensor, None coil_maps: complex sensitivities ``(C, *img_size)`` shared by the
        batch, or ``(B, C, *img_size)`` one set per batch element; ``None`` for a single coil of ones.
    :param torch.Tensor, str, None density: density-compensation weights ``(K,)`` (or ``(T, K)``),
        ``"pipe"`` to compute Pipe's weights now, or ``None`` to compute them on first use. Weights
        are rescaled so that gridding has unit gain on smooth images.
    :param bool toeplitz: use the Toeplitz-embedded normal operator.
    :param bool normalize: divide :meth:`A` and :meth:`A_adjoint` by :math:`\|A\|` (unit operator norm).
    :param torch.dtype dtype: computation precision, ``torch.float32`` or ``torch.float64``.
    :param deepinv.physics.NoiseModel noise_model: noise model applied to the measurements
        (``None``: noiseless).
    :param torch.device, str device: device of every buffer.
    :param kwargs: passed to :class:`deepinv.physics.LinearPhysics` (``max_iter``, ``tol``,
        ``solver`` of the least-squares solver; ``solver`` defaults to ``"CG"``).

    :Examples:

        >>> import torch
        >>> from deepinv_mol.physics import NufftMRI, birdcage_maps, radial_trajectory
        >>> physics = NufftMRI(radial_trajectory(24, 64), (32, 32), coil_maps=birdcage_maps(4, (32, 32)))
        >>> x = torch.randn(2, 2, 32, 32)
        >>> physics.A(x).shape
        torch.Size([2, 2, 4, 1536])
        >>> round(physics.compute_norm(x, tol=1e-6, verbose=False).item(), 2)  # normalize=True: ||A||^2 = 1
        1.0
        >>> bool(physics.adjointness_test(x) < 1e-4)
        True
        >>> err = physics.A_adjoint_A(x) - physics.A_adjoint(physics.A(x))
        >>> bool(err.norm() / physics.A_adjoint_A(x).norm() < 1e-4)
        True
    """

    def __init__(
        self,
        trajectory: torch.Tensor,
        img_size: tuple[int, ...],
        coil_maps: torch.Tensor | None = None,
        density: torch.Tensor | str | None = None,
        toeplitz: bool = True,
        noise_model: NoiseModel | None = None,
        device: torch.device | str = "cpu",
        normalize: bool = True,
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ):
        im_size = spatial_size(img_size, minimum=2)
        if not isinstance(toeplitz, bool):
            raise TypeError(f"toeplitz must be a bool, got {type(toeplitz).__name__}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        if dtype not in _COMPLEX_OF:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        kwargs.setdefault("solver", "CG")
        super().__init__(noise_model=noise_model, device=device, **kwargs)
        self.im_size = im_size
        self.toeplitz = toeplitz
        self.normalize = normalize
        # torchkbnufft's defaults (2x grid, 6 neighbours): lower settings break the float32-level
        # agreement between the Toeplitz kernel and the NUFFT pair (0.5 % at 1.25x)
        self.grid_size = tuple(2 * n for n in im_size)
        self.numpoints = 6
        # torchkbnufft's "ortho" divides by sqrt(grid size); rescale to the unitary-DFT sqrt(N)
        self._scale = math.sqrt(math.prod(self.grid_size) / math.prod(im_size))
        self._dtype = dtype

        self.register_buffer("trajectory", self._check_trajectory(trajectory))
        self._check_memory(coil_maps)
        self._build_nufft(dtype, self.trajectory.device)
        self.register_buffer("coil_maps", None)
        self.register_buffer("density", None)
        self.register_buffer("toeplitz_kernel", None)
        self.register_buffer("operator_norm", torch.ones((), dtype=torch.float64))
        self._sync_shapes()
        self.to(device)  # the kernel and density below are computed where the operator will run
        if coil_maps is not None:
            self.coil_maps = self._check_coil_maps(coil_maps)
        if toeplitz:
            self.toeplitz_kernel = self._compute_toeplitz_kernel()
        self._update_norm()
        self._set_density(density)
        self.to(device)

    # ------------------------------------------------------------------ precision and scale
    def _build_nufft(self, dtype: torch.dtype, device) -> None:
        """(Re)build torchkbnufft's modules with their interpolation tables in ``dtype``."""
        tkbn = _torchkbnufft()
        options = dict(im_size=self.im_size, grid_size=self.grid_size, numpoints=self.numpoints)
        self._forward_op = tkbn.KbNufft(**options, dtype=dtype, device=device)
        self._adjoint_op = tkbn.KbNufftAdjoint(**options, dtype=dtype, device=device)
        self._toeplitz_op = tkbn.ToepNufft()

    def _check_memory(self, coil_maps) -> None:
        coils = 1
        if isinstance(coil_maps, torch.Tensor) and coil_maps.ndim >= 1 + len(self.im_size):
            coils = int(coil_maps.shape[-len(self.im_size) - 1])
        frames = int(self.trajectory.shape[0]) if self.trajectory.ndim == 3 else 1
        complex_bytes = 2 * torch.finfo(self._dtype).bits // 8
        # one oversampled grid per coil and frame, plus the Toeplitz kernel (grid of 2^d x the image)
        grid = math.prod(self.grid_size) * complex_bytes * frames
        needed = grid * coils + grid * (2 ** len(self.im_size) if self.toeplitz else 0)
        refuse_if_too_large(
            f"NufftMRI(img_size={self.im_size}, coils={coils}, frames={frames})",
            needed,
            "use a smaller img_size or fewer coils/frames",
        )

    @property
    def dtype(self) -> torch.dtype:
        """Computation precision (``torch.float32`` or ``torch.float64``)."""
        return self._dtype

    def _apply(self, fn, recurse=True):
        # nn.Module.to(real dtype) would cast complex buffers to real (dropping the imaginary part):
        # map each complex buffer to the complex dtype matching the real dtype fn picks instead
        def safe(t):
            if not t.is_complex():
                return fn(t)
            probe = fn(torch.zeros((), dtype=t.real.dtype, device=t.device))
            if probe.dtype not in _COMPLEX_OF:
                raise TypeError(f"NufftMRI computes in float32 or float64, not {probe.dtype}")
            return t.to(device=probe.device, dtype=_COMPLEX_OF[probe.dtype])

        old = getattr(self, "_dtype", None)
        trajectory = self._buffers.get("trajectory")
        if old is not None and trajectory is not None:
            new = fn(torch.zeros((), dtype=old, device=trajectory.device)).dtype
            if new not in _COMPLEX_OF:
                raise TypeError(f"NufftMRI computes in float32 or float64, not {new}")
        norm = self._buffers.get("operator_norm")
        super()._apply(safe, recurse)
        if norm is not None:  # a float64 scalar whatever the precision (no float32 rounding on .to())
            self.operator_norm = norm.to(device=self.trajectory.device, dtype=torch.float64)
        if old is not None and trajectory is not None:
            if self.trajectory.dtype != old:
                # an accurate operator in the new precision: tables and kernel recomputed, not cast
                self._dtype = self.trajectory.dtype
                self._build_nufft(self._dtype, self.trajectory.device)
                if self.toeplitz and self.toeplitz_kernel is not None:
                    self.toeplitz_kernel = self._compute_toeplitz_kernel()
                if self.normalize:
                    self._update_norm()  # the norm in the new precision, as a fresh operator's
        return self

    def _update_norm(self) -> None:
        r"""Recompute ``operator_norm`` (:math:`\|A\|` of the unnormalised operator) when ``normalize``."""
        if not self.normalize:
            self.operator_norm = torch.ones((), dtype=torch.float64, device=self.trajectory.device)
            return
        self.operator_norm = torch.ones((), dtype=torch.float64, device=self.trajectory.device)
        batch = 1 if self.coil_maps is None else int(self.coil_maps.shape[0])
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((batch,) + self.img_size, generator=generator, dtype=self._dtype).to(self.trajectory.device)
        # the Toeplitz normal operator even when toeplitz=False: ~100x cheaper than the NUFFT pair
        kernel = self.toeplitz_kernel if self.toeplitz_kernel is not None else self._compute_toeplitz_kernel()

        def step(x):
            x = x / x.flatten(1).norm(dim=1).clamp_min(1e-30).reshape((-1,) + (1,) * (x.ndim - 1))
            z = self._apply_raw(x, "AHA", kernel=kernel)
            return z, (x * z).flatten(1).sum(1).max().item()  # Rayleigh quotient (largest item), x of unit norm

        with torch.no_grad():
            lam = power_iteration(step, x)
        if not lam > 0:
            raise ValueError("NufftMRI has a zero operator (all-zero coil maps?): cannot normalise it")
        self.operator_norm = torch.tensor(math.sqrt(lam), dtype=torch.float64, device=self.trajectory.device)

    # ------------------------------------------------------------------ validation
    def _check_trajectory(self, trajectory) -> torch.Tensor:
        traj = _as_real_float("trajectory", trajectory, cast=False)
        ndim = len(self.im_size)
        if traj.ndim == 2:
            if traj.shape[0] != ndim:
                raise ValueError(
                    f"trajectory must have {ndim} rows (one per image axis of img_size={self.im_size}), "
                    f"got shape {tuple(traj.shape)}"
                )
        elif traj.ndim == 3:
            if ndim != 2 or traj.shape[1] != 2:
                raise ValueError(
                    "a per-frame trajectory (T, 2, K) is for 2D + time (img_size=(H, W)); "
                    f"got shape {tuple(traj.shape)} with img_size={self.im_size}"
                )
        else:
            raise ValueError(
                f"trajectory must be ({ndim}, K) or, for 2D + time, (T, 2, K); got shape {tuple(traj.shape)}"
            )
        if traj.shape[-1] < 1:
            raise ValueError("trajectory has no samples (K = 0)")
        if not torch.isfinite(traj).all():
            raise ValueError("trajectory contains NaN or Inf")
        # -pi in float32 is a valid sample, and so is its float64 copy (8.7e-8 below -pi): tolerate
        # float32 rounding below -pi; +pi itself is out of range
        if (traj < -math.pi - _PI_TOLERANCE).any() or (traj >= math.pi).any():
            low, high = traj.min().item(), traj.max().item()
            raise ValueError(
                f"trajectory must be in radians within [-pi, pi), got values in [{low:.6g}, {high:.6g}] "
                "(wrap with torch.remainder(k + pi, 2 * pi) - pi, or rescale from 1/FOV units by 2*pi/N)"
            )
        dtype = getattr(self, "_dtype", torch.float32)
        traj = traj.to(torch.float64)  # a few float32 ulps below -pi: kept (the NUFFT is 2pi-periodic)
        # values at (or rounding onto) +pi: fold them (the NUFFT is 2pi-periodic)
        traj = torch.where(traj.to(dtype) >= math.pi, traj - 2 * math.pi, traj).to(dtype)
        device = self.trajectory.device if getattr(self, "trajectory", None) is not None else None
        return traj.to(device) if device is not None else traj

    def _check_coil_maps(self, coil_maps) -> torch.Tensor:
        if not isinstance(coil_maps, torch.Tensor):
            raise TypeError(f"coil_maps must be a complex tensor, got {type(coil_maps).__name__}")
        if not coil_maps.is_complex():
            raise TypeError(
                f"coil_maps must be a complex tensor (C, *img_size) or (B, C, *img_size), got dtype "
                f"{coil_maps.dtype}; build it with torch.complex(real, imag)"
            )
        ndim = len(self.im_size)
        if coil_maps.ndim not in (ndim + 1, ndim + 2) or tuple(coil_maps.shape[-ndim:]) != self.im_size:
            raise ValueError(
                f"coil_maps must have shape (C, {', '.join(map(str, self.im_size))}) or (B, C, ...) to "
                f"match img_size={self.im_size}, got {tuple(coil_maps.shape)}"
            )
        if not torch.isfinite(torch.view_as_real(coil_maps)).all():
            raise ValueError("coil_maps contain NaN or Inf")
        if coil_maps.ndim == ndim + 2 and coil_maps.shape[0] == 0:
            raise ValueError("coil_maps (B, C, ...) has an empty batch (B = 0)")
        if coil_maps.shape[-ndim - 1] == 0:
            raise ValueError(f"coil_maps must hold at least one coil, got shape {tuple(coil_maps.shape)}")
        maps = coil_maps if coil_maps.ndim == ndim + 2 else coil_maps.unsqueeze(0)
        return maps.to(device=self.trajectory.device, dtype=_COMPLEX_OF[self._dtype])

    def _check_density(self, density) -> torch.Tensor:
        weights = _as_real_float("density", density, cast=False).to(self._dtype)
        expected = tuple(self.trajectory.shape[:-2]) + (self.trajectory.shape[-1],)
        if tuple(weights.shape) != expected:
            raise ValueError(f"density must have shape {expected} (one weight per sample), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("density weights must be finite and non-negative")
        return weights.to(self.trajectory.device)

    def _check_input(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """Check an image (``kind='image'``) or k-space tensor against the operator."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{kind} must be a torch.Tensor, got {type(t).__name__}")
        expected = self._expected_shape(kind)
        layout = "(" + ", ".join(["B"] + [str(n) for n in expected]) + ")"
        if t.is_complex():
            raise TypeError(
                f"{kind} must be a real tensor {layout} with real and imaginary parts in dim 1 "
                "(deepinv's convention), got a complex tensor; convert with torch.stack((z.real, z.imag), dim=1)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{kind} must be a floating-point tensor {layout}, got dtype {t.dtype}")
        if t.ndim != len(expected) + 1 or tuple(t.shape[1:]) != expected:
            raise ValueError(f"NufftMRI expects {kind} of shape {layout}, got {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"NufftMRI got an empty batch: {kind} of shape {tuple(t.shape)} (B must be >= 1)")
        maps = self.coil_maps
        if maps is not None and maps.shape[0] not in (1, t.shape[0]):
            raise ValueError(
                f"coil_maps hold {maps.shape[0]} per-batch sets but the {kind} batch has {t.shape[0]} elements"
            )
        if t.device.type != "meta" and not is_functorch_wrapped(t) and not torch.isfinite(t).all():
            raise ValueError(f"NufftMRI got a {kind} containing NaN or Inf values")
        return t

    def _expected_shape(self, kind: str) -> tuple[int, ...]:
        frames = () if self.frames is None else (self.frames,)
        if kind == "image":
            return (2,) + frames + self.im_size
        return (2,) + frames + (self.n_coils, self.trajectory.shape[-1])

    # ------------------------------------------------------------------ state
    @property
    def n_coils(self) -> int:
        """Number of coils :math:`C` (1 without coil maps)."""
        return 1 if self.coil_maps is None else int(self.coil_maps.shape[1])

    def _sync_shapes(self):
        # frames and deepinv's img_size (channels first, no batch) follow the trajectory
        self.frames = int(self.trajectory.shape[0]) if self.trajectory.ndim == 3 else None
        self.img_size = (2,) + (() if self.frames is None else (self.frames,)) + self.im_size

    def _set_density(self, density):
        if density is None:
            self.density = None
        elif isinstance(density, str):
            if density != "pipe":
                raise ValueError(f"density must be a tensor, 'pipe' or None, got {density!r}")
            self.density = self._normalise_density(self._pipe_density())
        else:
            self.density = self._normalise_density(self._check_density(density))

    def _compute_toeplitz_kernel(self) -> torch.Tensor:
        tkbn = _torchkbnufft()
        with _quiet_torchkbnufft():
            kernel = tkbn.calc_toeplitz_kernel(
                self.trajectory, im_size=self.im_size, grid_size=self.grid_size,
                numpoints=self.numpoints, norm="ortho",
            )
        return self._fold_cartesian_axes(kernel) * self._scale**2

    def cartesian_axes(self) -> tuple[int, ...]:
        r"""Spatial axes (0 = the first spatial dimension of ``img_size``) on which every sample of the
        trajectory lies on the image's DFT grid (:math:`k\,n/2\pi` an integer), e.g. the :math:`k_z` partitions
        of a stack-of-stars: along them :math:`A^HA` is a circular convolution and needs no zero padding."""
        d = len(self.im_size)
        coords = self.trajectory.reshape(-1, d, self.trajectory.shape[-1]).transpose(0, 1).reshape(d, -1)
        axes = []
        for axis, n in enumerate(self.im_size):
            index = coords[axis].double() * (n / (2 * math.pi))
            if bool(((index - index.round()).abs() <= 1e-4).all()):
                axes.append(axis)
        return tuple(axes)

    def _fold_cartesian_axes(self, kernel: torch.Tensor) -> torch.Tensor:
        r"""Fold torchkbnufft's Toeplitz kernel (twice the image size on every axis) to the image size on the
        :meth:`cartesian_axes`.

        Along such an axis the point-spread function is periodic with the image's period, so one period
        filtered circularly gives the same :math:`A^HA` (to float32 rounding) at half the FFT work per folded
        axis; ``ToepNufft`` pads to the kernel's size, so it runs unchanged (mri-3d, 16x64x64, 8 coils: 0.127 ->
        0.062 s per :math:`A^HA`). Ours because torchkbnufft pads every axis. An axis whose computed
        point-spread function is not periodic to 1e-4 stays padded."""
        d = len(self.im_size)
        for axis in self.cartesian_axes():
            n, dim = self.im_size[axis], kernel.ndim - d + axis
            if kernel.shape[dim] != 2 * n:
                continue
            psf = torch.fft.ifft(kernel, dim=dim)
            # offsets 1..n-1 against 1-n..-1: equal when periodic
            head, tail = psf.narrow(dim, 1, n - 1), psf.narrow(dim, n + 1, n - 1)
            if float((head - tail).norm()) > 1e-4 * float(psf.norm()):
                continue
            kernel = torch.fft.fft(psf.narrow(dim, 0, n), dim=dim)
        return kernel

    def _pipe_density(self) -> torch.Tensor:
        tkbn = _torchkbnufft()
        with _quiet_torchkbnufft():
            weights = tkbn.calc_density_compensation_function(
                self.trajectory, im_size=self.im_size, grid_size=self.grid_size, numpoints=self.numpoints
            )
        # (1, 1, K) or (T, 1, K) complex -> (K,) or (T, K) real
        return weights.real.reshape(tuple(self.trajectory.shape[:-2]) + (self.trajectory.shape[-1],))

    def _normalise_density(self, weights: torch.Tensor) -> torch.Tensor:
        """Scale ``weights`` so that gridding reproduces a smooth image with unit gain (per frame).

        The smooth image is a centred Gaussian of width N/8 per axis: its spectrum lies where every
        trajectory samples densely, so the gain measures the weights, not the k-space coverage.
        """
        frames = 1 if self.frames is None else self.frames
        axes = [torch.arange(n, dtype=self._dtype, device=weights.device) - n // 2 for n in self.im_size]
        grids = torch.meshgrid(*axes, indexing="ij")
        blob = torch.exp(-0.5 * sum((g / (n / 8)) ** 2 for g, n in zip(grids, self.im_size)))
        blob = blob.to(_COMPLEX_OF[self._dtype]).expand((frames, 1) + self.im_size)
        w = weights.reshape(frames, 1, -1)
        with _quiet_torchkbnufft():
            data = self._forward_op(blob, self.trajectory, norm="ortho")
            image = self._adjoint_op(w * data, self.trajectory, norm="ortho")
        # the gain of the operator as used (normalised or not): gridding stays unit-gain
        gain = (self._scale / self.operator_norm.item()) ** 2 * (blob.conj() * image).real.flatten(1).sum(1) / blob.abs().pow(2).flatten(1).sum(1)
        if not (gain > 0).all():
            raise ValueError("density weights give a non-positive gridding gain (all-zero weights?)")
        return (w / gain[:, None, None]).reshape(weights.shape)

    def update_parameters(
        self,
        trajectory: torch.Tensor | None = None,
        coil_maps: torch.Tensor | None = None,
        density: torch.Tensor | str | None = None,
        **kwargs,
    ) -> None:
        r"""Change the trajectory, coil maps or density weights (``physics(x, trajectory=...)`` calls this).

        A new trajectory recomputes the Toeplitz kernel (when ``toeplitz=True``) and drops cached
        density weights unless new ones are given with it; the number of frames may change, the
        number of image axes may not.

        :param torch.Tensor trajectory: new trajectory (same layout rules as the constructor).
        :param torch.Tensor coil_maps: new complex coil maps ``(C, ...)`` or ``(B, C, ...)``.
        :param torch.Tensor, str density: new density weights (or ``"pipe"``).
        """
        if trajectory is not None:
            self.trajectory = self._check_trajectory(trajectory)
            self._sync_shapes()
            if self.toeplitz:
                self.toeplitz_kernel = self._compute_toeplitz_kernel()
            if density is None:
                self.density = None
        if coil_maps is not None:
            self.coil_maps = self._check_coil_maps(coil_maps)
        if (trajectory is not None or coil_maps is not None) and self.normalize:
            self._update_norm()
            if density is None and self.density is not None:
                self.density = None  # its gain was for the previous norm: recompute on demand
        if density is not None:
            self._set_density(density)
        super().update_parameters(**kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # our buffers may differ in shape between instances (trajectory length, coil count, cached
        # density): take the incoming shapes instead of failing, then re-derive frames/img_size
        if prefix + "operator_norm" not in state_dict:  # a state_dict from before normalisation
            state_dict[prefix + "operator_norm"] = self.operator_norm.clone()
        for name in ("trajectory", "coil_maps", "density", "toeplitz_kernel"):
            incoming = state_dict.get(prefix + name)
            if incoming is None:
                if name == "density":
                    self.density = None  # a cached density of another trajectory is stale
                continue
            local = self._buffers.get(name)
            if local is None or local.shape != incoming.shape:
                self._buffers[name] = torch.empty_like(incoming, device=self.trajectory.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_shapes()
        if self.trajectory.dtype != self._dtype:  # a state_dict of the other precision
            self._dtype = self.trajectory.dtype
            self._build_nufft(self._dtype, self.trajectory.device)

    # ------------------------------------------------------------------ complex plumbing
    def _image_to_complex(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 2, [T,] *im) real -> (N, 1, *im) complex, N = B or B*T
        z = torch.complex(x[:, 0], x[:, 1])
        return z.reshape((-1, 1) + self.im_size)

    def _omega(self, batch: int) -> torch.Tensor:
        # a per-frame trajectory becomes a per-item trajectory of the (B*T) folded batch
        return self.trajectory if self.frames is None else self.trajectory.repeat(batch, 1, 1)

    def _maps(self, batch: int):
        if self.coil_maps is None:
            return None
        maps = self.coil_maps.expand((batch,) + self.coil_maps.shape[1:])
        if self.frames is not None:
            maps = maps.unsqueeze(1).expand((batch, self.frames) + maps.shape[1:]).flatten(0, 1)
        return maps

    @staticmethod
    def _to_two_channel(z: torch.Tensor, dtype) -> torch.Tensor:
        return torch.stack((z.real, z.imag), dim=1).to(dtype)

    # ------------------------------------------------------------------ operators
    def _apply_raw(self, t: torch.Tensor, mode: str, kernel: torch.Tensor | None = None) -> torch.Tensor:
        r"""``mode`` in ``"A"``, ``"AH"``, ``"AHA"`` on a checked two-channel tensor, in the operator's
        precision, normalised when ``normalize``; returns the input's dtype. No autograd graph."""
        dtype = t.dtype
        t = t.to(self._dtype)
        batch = t.shape[0]
        norm = self.operator_norm.item() if self.normalize else 1.0
        with _quiet_torchkbnufft():
            if mode == "A":
                y = self._forward_op(
                    self._image_to_complex(t), self._omega(batch), smaps=self._maps(batch), norm="ortho"
                )
                if self.frames is not None:
                    y = y.reshape((batch, self.frames) + y.shape[1:])
                out = self._to_two_channel(y * (self._scale / norm), dtype)
            elif mode == "AH":
                data = torch.complex(t[:, 0], t[:, 1]).reshape((-1,) + t.shape[-2:])
                x = self._adjoint_op(data, self._omega(batch), smaps=self._maps(batch), norm="ortho")
                out = self._to_two_channel((self._scale / norm) * x[:, 0].reshape((batch,) + self.img_size[1:]), dtype)
            elif not self.toeplitz and kernel is None:
                return self._apply_raw(self._apply_raw(t, "A"), "AH").to(dtype)
            else:
                kernel = self.toeplitz_kernel if kernel is None else kernel
                maps = self._maps(batch)
                if self.frames is not None:
                    kernel = kernel.repeat(batch, *([1] * (kernel.ndim - 1)))
                    if maps is None:
                        # (N, 1, ...) so that ToepNufft's filter broadcasts item by item, not N x N
                        kernel = kernel.unsqueeze(1)
                z = self._toeplitz_op(self._image_to_complex(t), kernel, smaps=maps, norm="ortho")
                out = self._to_two_channel(z[:, 0].reshape((batch,) + self.img_size[1:]), dtype)
                if norm != 1.0:
                    out = out / norm**2
        return out

    def A(self, x: torch.Tensor, **params) -> torch.Tensor:
        r"""Forward operator: image ``(B, 2, [T,] *img_size)`` to k-space ``(B, 2, [T,] C, K)``.

        :param torch.Tensor x: image in deepinv's two-channel layout.
        :param params: optional new ``trajectory``/``coil_maps``/``density`` (see :meth:`update_parameters`).
        :return: (:class:`torch.Tensor`) k-space samples.
        """
        if params:
            self.update_parameters(**params)
        self._check_input(x, "image")
        return _NufftOp.apply(x, self, "A")

    def A_adjoint(self, y: torch.Tensor, **params) -> torch.Tensor:
        r"""Adjoint operator: k-space ``(B, 2, [T,] C, K)`` to image ``(B, 2, [T,] *img_size)``.

        :param torch.Tensor y: k-space in deepinv's two-channel layout.
        :param params: optional new ``trajectory``/``coil_maps``/``density``.
        :return: (:class:`torch.Tensor`) image :math:`A^H y`.
        """
        if params:
            self.update_parameters(**params)
        self._check_input(y, "k-space")
        return _NufftOp.apply(y, self, "AH")

    def A_adjoint_A(self, x: torch.Tensor, **params) -> torch.Tensor:
        r"""Normal operator :math:`A^H A x`: Toeplitz FFT filter (``toeplitz=True``) or the NUFFT pair.

        :param torch.Tensor x: image ``(B, 2, [T,] *img_size)``.
        :param params: optional new ``trajectory``/``coil_maps``/``density``.
        :return: (:class:`torch.Tensor`) :math:`A^H A x`, same shape as ``x``.
        """
        if params:
            self.update_parameters(**params)
        if not self.toeplitz:
            return self.A_adjoint(self.A(x))
        self._check_input(x, "image")
        return _NufftOp.apply(x, self, "AHA")

    # ------------------------------------------------------------------ density compensation
    def density_compensation(self) -> torch.Tensor:
        r"""Density-compensation weights :math:`w` ``(K,)`` or ``(T, K)``, computed once if needed.

        Pipe's fixed-point iteration :math:`w \leftarrow w / |G G^H w|` (:math:`G` the gridding
        interpolator; torchkbnufft's ``calc_density_compensation_function``), rescaled so that
        :meth:`gridding` reproduces a smooth image (a centred Gaussian of width :math:`N/8`) with unit
        gain. Cached in the buffer ``density``.

        :return: (:class:`torch.Tensor`) non-negative weights, one per k-space sample.
        """
        if self.density is None:
            self.density = self._normalise_density(self._pipe_density())
        return self.density

    def _weight(self, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # (K,) -> (1, 1, 1, K); (T, K) -> (1, 1, T, 1, K)
        w = weights if self.frames is None else weights.unsqueeze(-2)
        return y * w.to(y.dtype)

    def gridding(self, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        r"""Gridding reconstruction: the density-compensated adjoint :math:`A^H W y`.

        :param torch.Tensor y: k-space ``(B, 2, [T,] C, K)``.
        :param torch.Tensor weights: weights ``(K,)``/``(T, K)``; default :meth:`density_compensation`.
        :return: (:class:`torch.Tensor`) image ``(B, 2, [T,] *img_size)``.
        """
        weights = self.density_compensation() if weights is None else self._check_density(weights)
        return self.A_adjoint(self._weight(y, weights))

    def A_dagger(
        self,
        y: torch.Tensor,
        solver: str = "CG",
        max_iter: int | None = None,
        tol: float | None = None,
        verbose: bool = False,
        density_compensation: bool = False,
        density_compensate: bool | None = None,
        **kwargs,
    ) -> torch.Tensor:
        r"""Least-squares reconstruction by CG; optionally density-weighted.

        * ``density_compensation=False``: deepinv's solver on :math:`A^H A x = A^H y` (Toeplitz
          normal operator when enabled), i.e. :meth:`deepinv.physics.LinearPhysics.A_dagger`.
        * ``density_compensation=True``: CG on :math:`A^H W A x = A^H W y`, the minimiser of
          :math:`\|W^{1/2}(Ax - y)\|^2`, started from the gridding reconstruction; the weights even
          out the radial over-sampling of the k-space centre, so CG converges in fewer iterations
          (the same solution for consistent data, a differently weighted one for noisy data).

        After the solve, ``self.last_solve`` holds ``{"residual": r, "tol": tol, "converged": bool}``
        with :math:`r` the largest relative normal-equation residual over the batch; a warning is
        raised when :math:`r >` ``tol``.

        :param torch.Tensor y: k-space ``(B, 2, [T,] C, K)``.
        :param str solver: deepinv least-squares solver (plain path), ``"CG"`` by default.
        :param int max_iter: iteration cap (default: ``self.max_iter``).
        :param float tol: relative tolerance (default: ``self.tol``).
        :param bool verbose: print solver information.
        :param bool density_compensation: solve the density-weighted problem.
        :param bool density_compensate: deepinv's spelling of ``density_compensation``
            (:class:`deepinv.physics.NonCartesianMRI`); either may be given.
        :return: (:class:`torch.Tensor`) image ``(B, 2, [T,] *img_size)``.
        """
        from deepinv.optim.linear import conjugate_gradient

        if density_compensate is not None:
            if not isinstance(density_compensate, bool):
                raise TypeError(f"density_compensate must be a bool, got {type(density_compensate).__name__}")
            density_compensation = density_compensation or density_compensate

        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        if not density_compensation:
            x = super().A_dagger(y, solver=solver, max_iter=max_iter, tol=tol, verbose=verbose, **kwargs)
            normal, rhs = self.A_adjoint_A, self.A_adjoint(y)
        else:
            weights = self.density_compensation()
            rhs = self.gridding(y)

            def normal(v):
                return self.A_adjoint(self._weight(self.A(v), weights))

            x = conjugate_gradient(normal, rhs, max_iter=max_iter, tol=tol, init=rhs, verbose=verbose)
        with torch.no_grad():
            residual = (normal(x) - rhs).flatten(1).norm(dim=1) / rhs.flatten(1).norm(dim=1).clamp_min(1e-30)
            worst = residual.max().item()
        self.last_solve = {"residual": worst, "tol": float(tol), "converged": worst <= tol}
        if worst > tol:
            warnings.warn(
                f"NufftMRI.A_dagger: relative normal-equation residual {worst:.2e} > tol {tol:.1e} "
                f"after max_iter={max_iter} (raise max_iter, or a float32 floor was reached)",
                stacklevel=2,
            )
        return x
