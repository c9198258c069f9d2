r"""X-ray CT on ASTRA that runs on a laptop (CPU) and on a GPU server (CUDA) alike.

deepinv's :class:`deepinv.physics.TomographyWithAstra` is CUDA-only, and ASTRA's CUDA/3D code kills
the Python process with ``SIGFPE`` on a machine without a GPU. :class:`AstraCT` picks ASTRA's CPU
projectors when no GPU is usable, checks for a GPU before *every* CUDA call, and raises a clear
Python exception instead of letting ASTRA crash the interpreter.

Conventions (shared by every geometry and backend)
--------------------------------------------------
* **Images** are ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D); channels are independent images.
  Column index ``w`` runs along :math:`+x`, row index ``h`` runs along :math:`-y` (row 0 is the top
  of the image, as displayed by ``imshow``), slice index ``d`` runs along :math:`+z`. The image is
  centred on the rotation axis; a pixel/voxel is a cube of side ``pixel_size`` (physical units, e.g. mm).
* **Angles** are in radians. At angle :math:`\theta` a parallel ray measures the line
  :math:`x\cos\theta + y\sin\theta = s`; at :math:`\theta=0` the rays run along :math:`y` and the
  detector coordinate :math:`s` runs along :math:`+x` (column sums of the image). Fan and cone beams
  put the source at distance ``source_origin`` from the axis and a flat detector at distance
  ``origin_detector`` on the other side (ASTRA's ``fanflat``/``cone``).
* **Sinograms** are ``(B, C, A, N)`` in 2D (A angles, N detector cells, detector index increasing with
  :math:`s`) and ``(B, C, V, A, N)`` in 3D (V detector rows, ASTRA's 3D layout, as
  :class:`deepinv.physics.TomographyWithAstra`). For 3D parallel beam on CPU row ``v`` is slice ``d``.
* **Units of the output**: line integrals in physical length units,
  :math:`y = \int x\,\mathrm{d}\ell` with :math:`\mathrm{d}\ell` in the units of ``pixel_size``
  (doubling ``pixel_size`` doubles the sinogram). FBP returns the image in the units of ``x``.
"""

from __future__ import annotations

import copy
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from deepinv.physics import LinearPhysics, NoiseModel

from ._utils import is_functorch_wrapped, linear_map_function, power_iteration, refuse_if_too_large

__all__ = ["AstraCT", "MATRIX_AUTO_BYTES", "MATRIX_AUTO_CALLS"]

_GEOMETRIES = ("parallel", "fanbeam", "cone")
_BACKENDS = ("auto", "cpu", "cuda")
#: ``matrix="auto"`` keeps a 2D CPU projector's sparse matrix when it is estimated below this size (bytes)
MATRIX_AUTO_BYTES = 256 * 2**20
#: ``matrix="auto"`` builds the matrix after this many projections of one geometry with ASTRA's FP/BP
MATRIX_AUTO_CALLS = 32

_CPU_PROJECTORS = {"parallel": ("linear", "line", "strip"), "fanbeam": ("line_fanflat", "strip_fanflat")}


def _cuda_usable() -> bool:
    r"""Whether ASTRA's CUDA code can run here: torch sees a GPU *and* ASTRA was built with CUDA.

    torch is asked first: on a machine without a GPU we never touch ASTRA's CUDA runtime at all.
    """
    if not torch.cuda.is_available():
        return False
    import astra

    try:
        return bool(astra.use_cuda())
    except Exception:  # an ASTRA without CUDA support may raise instead of returning False
        return False


def _require_cuda(what: str) -> None:
    r"""Raise :class:`RuntimeError` unless a GPU is usable (ASTRA's CUDA code would kill the process)."""
    if not _cuda_usable():
        raise RuntimeError(
            f"{what} needs a CUDA GPU usable by both torch and ASTRA "
            f"(torch.cuda.is_available()={torch.cuda.is_available()}); refusing to call ASTRA's CUDA "
            "code, which kills the Python process with SIGFPE when no GPU is present. "
            "Use backend='cpu' (2D parallel/fan beam, 3D parallel beam slice by slice)."
        )


def _positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _ramp_filter(y: np.ndarray, spacing: float) -> np.ndarray:
    r"""Ram-Lak filter along the last axis (detector), spatial-domain kernel, zero padded.

    .. math:: h[0] = \frac{1}{4\Delta^2},\quad h[n] = -\frac{1}{(\pi n \Delta)^2}\ (n\ \mathrm{odd}),\quad 0\ \mathrm{else}

    (Kak & Slaney eq. 3.61), applied as :math:`\Delta\,(h * q)`. Used for 3D parallel-beam FBP on
    the GPU, where ASTRA has no 3D parallel FBP; checked against ASTRA's 2D ``FBP`` in the tests.
    """
    n = y.shape[-1]
    size = int(2 ** math.ceil(math.log2(2 * n)))
    k = np.arange(size)
    k = np.where(k < size // 2, k, k - size).astype(np.float64)
    h = np.zeros(size)
    h[0] = 1.0 / (4 * spacing**2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd] * spacing) ** 2
    H = np.fft.rfft(h)
    Y = np.fft.rfft(y.astype(np.float64), n=size, axis=-1)
    return (np.fft.irfft(Y * H, n=size, axis=-1)[..., :n] * spacing).astype(np.float32)


def _ramp_backprojection(engine, y: np.ndarray, detector_spacing: float, pixel_size: float) -> np.ndarray:
    r"""Parallel-beam FBP as ramp filter + the engine's back projection (angles over :math:`\pi`).

    .. math:: x \approx \frac{\pi}{n_\text{angles}}\,\frac{\Delta}{p^2}\, A^\top (h * y)

    since ASTRA's :math:`A^\top` sums ray weights, about :math:`p^2/\Delta` per pixel and angle
    (:math:`p` pixel size, :math:`\Delta` detector spacing, rows spaced by :math:`p` in 3D).
    """
    filtered = _ramp_filter(y, detector_spacing)
    return engine.adjoint(filtered) * (math.pi / y.shape[-2] * detector_spacing / pixel_size**2)


# --------------------------------------------------------------------------------------------------
# Engines: numpy in, numpy out; they own the ASTRA objects (projector ids) of one geometry.
# --------------------------------------------------------------------------------------------------


def _torch_csr(m) -> torch.Tensor:
    r"""A scipy CSR matrix as a torch sparse CSR tensor (int32 indices when they fit: half the memory)."""
    index = np.int32 if max(m.nnz, *m.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta state": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(index)), torch.from_numpy(m.indices.astype(index)),
            torch.from_numpy(m.data), size=m.shape, check_invariants=False,
        )


class _Engine2D:
    r"""2D projector (CPU, or CUDA when ``cuda=True``) applied image by image; ASTRA releases the
    GIL, so a batch runs on ``n_threads`` threads."""

    def __init__(self, vol_geom, proj_geom, projector_type, cuda=False, n_threads=1, matrix=False):
        self.vol_geom, self.proj_geom = vol_geom, proj_geom
        self.projector_type = projector_type
        self.cuda = cuda
        self.n_threads = 1 if cuda else max(1, int(n_threads))
        self._proj_id = None
        # True: the sparse matrix from the first call; "auto": after MATRIX_AUTO_CALLS calls of ASTRA's FP/BP
        # (a geometry used that often will be used again: building the matrix costs about 20-40 projections)
        self.use_matrix = (matrix is True or matrix == "auto") and not cuda
        self._matrix_after = MATRIX_AUTO_CALLS if matrix == "auto" else 0
        self._calls = 0
        self._matrix = None

    @property
    def matrix(self):
        r"""The projector's weights :math:`W` and :math:`W^\top` as float32 sparse CSR tensors of torch (rays x
        pixels, pixels x rays), built once from ASTRA's own projector (``astra.projector.matrix``): the weights
        its CPU FP and BP apply. Why torch's sparse product rather than scipy's: on the 256x256, 60-view fan
        beam, a batch of two through :math:`W^\top W` takes 42 ms with torch against 71 ms with scipy (one
        thread each), and torch's uses the threads of ``torch.set_num_threads``."""
        if self._matrix is None:
            import astra

            mid = astra.projector.matrix(self.proj_id)
            try:
                w = astra.matrix.get(mid)
            finally:
                astra.matrix.delete(mid)
            w = w.tocsr().astype(np.float32)
            # the transpose as its own CSR: back projection as a row-wise product (2x faster than through CSC)
            self._matrix = tuple(_torch_csr(m) for m in (w, w.T.tocsr()))
        return self._matrix

    def _matrix_map(self, src, adjoint):
        # one sparse product for the whole batch: the weights are read once for all its images
        w = self.matrix[1] if adjoint else self.matrix[0]
        out_shape = self.vol_shape if adjoint else self.sino_shape
        flat = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).reshape(src.shape[0], -1).T
        out = (w @ flat).T.contiguous().numpy()
        return out.reshape((src.shape[0],) + tuple(out_shape))

    @property
    def proj_id(self):
        if self._proj_id is None:
            import astra

            if self.cuda:
                _require_cuda("ASTRA 2D CUDA projector")
            self._proj_id = astra.create_projector(self.projector_type, self.proj_geom, self.vol_geom)
        return self._proj_id

    def _run(self, kind, src, out, src_is_volume, options=None):
        import astra

        if self.cuda:
            _require_cuda(f"ASTRA {kind}_CUDA")
        # link: ASTRA reads/writes the numpy buffers in place (no copies)
        vol, sino = (src, out) if src_is_volume else (out, src)
        vid = astra.data2d.link("-vol", self.vol_geom, vol)
        sid = astra.data2d.link("-sino", self.proj_geom, sino)
        cfg = astra.astra_dict(kind + ("_CUDA" if self.cuda else ""))
        cfg["ProjectorId"] = self.proj_id
        cfg["ProjectionDataId"] = sid
        if kind == "FP":
            cfg["VolumeDataId"] = vid
        else:
            cfg["ReconstructionDataId"] = vid
        if options:
            cfg["option"] = dict(options)
        alg = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg)
        finally:
            astra.algorithm.delete(alg)
            astra.data2d.delete([vid, sid])

    def _map(self, kind, src, out_shape, src_is_volume, options=None):
        out = np.zeros((src.shape[0],) + tuple(out_shape), dtype=np.float32)

        def job(i):
            self._run(kind, src[i], out[i], src_is_volume, options)

        # threads pay off only when one projection is sizeable (pool start-up is ~0.1 ms)
        work = np.prod(self.vol_shape) * self.sino_shape[0]
        if self.n_threads > 1 and src.shape[0] > 1 and work > 2e5:
            with ThreadPoolExecutor(min(self.n_threads, src.shape[0])) as pool:
                list(pool.map(job, range(src.shape[0])))
        else:
            for i in range(src.shape[0]):
                job(i)
        return out

    @property
    def vol_shape(self):
        return (self.vol_geom["GridRowCount"], self.vol_geom["GridColCount"])

    @property
    def sino_shape(self):
        return (len(self.proj_geom["ProjectionAngles"]), self.proj_geom["DetectorCount"])

    def _matrix_now(self) -> bool:
        self._calls += 1
        return self.use_matrix and self._calls > self._matrix_after

    def forward(self, x):
        if self._matrix_now():
            return self._matrix_map(x, adjoint=False)
        return self._map("FP", x, self.sino_shape, True)

    def adjoint(self, y):
        if self._matrix_now():
            return self._matrix_map(y, adjoint=True)
        return self._map("BP", y, self.vol_shape, False)

    def fbp(self, y):
        return self._map("FBP", y, self.vol_shape, False, {"FilterType": "ram-lak"})

    def close(self):
        if self._proj_id is not None:
            try:
                import astra

                astra.projector.delete(self._proj_id)
            except Exception:  # interpreter shutdown: ASTRA may already be gone
                pass
            self._proj_id = None

    def __del__(self):
        self.close()


class _Engine3D:
    r"""ASTRA 3D CUDA (parallel3d / cone) through ``astra.experimental.direct_FP3D/BP3D``."""

    def __init__(self, vol_geom, proj_geom):
        self.vol_geom, self.proj_geom = vol_geom, proj_geom
        self._proj_id = None

    @property
    def proj_id(self):
        if self._proj_id is None:
            import astra

            _require_cuda("ASTRA 3D CUDA projector")
            self._proj_id = astra.create_projector("cuda3d", self.proj_geom, self.vol_geom)
        return self._proj_id

    @property
    def vol_shape(self):
        g = self.vol_geom
        return (g["GridSliceCount"], g["GridRowCount"], g["GridColCount"])

    @property
    def sino_shape(self):
        g = self.proj_geom
        return (g["DetectorRowCount"], len(g["ProjectionAngles"]), g["DetectorColCount"])

    def forward(self, x):
        import astra.experimental

        _require_cuda("ASTRA FP3D_CUDA")
        out = np.zeros((x.shape[0],) + self.sino_shape, dtype=np.float32)
        for i in range(x.shape[0]):
            astra.experimental.direct_FP3D(self.proj_id, x[i], out[i])
        return out

    def adjoint(self, y):
        import astra.experimental

        _require_cuda("ASTRA BP3D_CUDA")
        out = np.zeros((y.shape[0],) + self.vol_shape, dtype=np.float32)
        for i in range(y.shape[0]):
            astra.experimental.direct_BP3D(self.proj_id, out[i], y[i])
        return out

    def fdk(self, y):
        import astra

        _require_cuda("ASTRA FDK_CUDA")
        out = np.zeros((y.shape[0],) + self.vol_shape, dtype=np.float32)
        for i in range(y.shape[0]):
            vid = astra.data3d.link("-vol", self.vol_geom, out[i])
            sid = astra.data3d.link("-sino", self.proj_geom, y[i])
            cfg = astra.astra_dict("FDK_CUDA")
            cfg["ProjectionDataId"] = sid
            cfg["ReconstructionDataId"] = vid
            alg = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg)
            finally:
                astra.algorithm.delete(alg)
                astra.data3d.delete([vid, sid])
        return out

    def close(self):
        if self._proj_id is not None:
            try:
                import astra

                astra.projector3d.delete(self._proj_id)
            except Exception:
                pass
            self._proj_id = None

    def __del__(self):
        self.close()


_Project = linear_map_function(
    "_Project",
    r"""Forward (``mode=False``) or back projection (``mode=True``, the adjoint), a new-style autograd Function
    (``torch.func`` ready): the backward of one is the other (the matched adjoint), the forward-mode derivative
    of a linear map is the map, and ``vmap`` folds the mapped dimension into the batch.""",
    run=lambda x, physics, adjoint: physics._project(x, adjoint),
    adjoint_mode=lambda adjoint: not adjoint,
    fold_vmap=True,
)


class AstraCT(LinearPhysics):
    r"""X-ray CT (parallel, fan and cone beam) on the ASTRA toolbox, on CPU or GPU.

    The forward operator is ASTRA's discrete X-ray transform

    .. math:: y_{a,n} = \sum_{j} w_{a,n,j}\, x_j \approx \int_{L_{a,n}} x(\mathbf{r})\,\mathrm{d}\ell,

    with :math:`w_{a,n,j}` the weight of pixel :math:`j` on ray :math:`L_{a,n}` (angle :math:`a`,
    detector cell :math:`n`), in physical length units. :meth:`A_adjoint` is ASTRA's back projection
    :math:`A^\top y`, which on CPU uses the *same* projector weights, so it is the exact adjoint up to
    float32 rounding (relative adjointness ~1e-6). ASTRA's CUDA projectors (ray-driven forward,
    voxel-driven back projection) are only approximately matched; measure with
    :meth:`adjointness_test` on your GPU.

    Backends and geometries:

    ================== ============================== ============================================
    geometry           ``backend="cpu"``              ``backend="cuda"``
    ================== ============================== ============================================
    2D ``parallel``    ASTRA CPU (``linear``/Joseph)  ASTRA 2D CUDA
    2D ``fanbeam``     ASTRA CPU (``line_fanflat``)   ASTRA 2D CUDA
    3D ``parallel``    CPU, slice by slice            ASTRA 3D CUDA (``parallel3d``)
    3D ``cone``        -- (raises)                    ASTRA 3D CUDA (``cone``), FDK
    ================== ============================== ============================================

    ``backend="auto"`` picks CUDA only when ``torch.cuda.is_available()`` and ``astra.use_cuda()``
    are both true. ASTRA's CUDA code is never called otherwise: asking for it raises
    :class:`RuntimeError` instead of killing the process (ASTRA's SIGFPE on machines without GPU).

    See the module docstring for axis order, angle origin and units. Inputs on a GPU are processed
    by the chosen backend and returned on the input's device; ASTRA computes in float32 and the
    output is cast back to the input's floating dtype.

    :param tuple[int, ...] img_size: ``(H, W)`` or ``(D, H, W)``.
    :param torch.Tensor angles: 1D projection angles in radians (any sequence or array is accepted).
    :param str geometry: ``"parallel"``, ``"fanbeam"`` (2D) or ``"cone"`` (3D).
    :param int | tuple[int, int] n_detectors: detector cells; ``(rows, cols)`` for cone beam. Default:
        just enough to see the whole image at every angle.
    :param str backend: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param float pixel_size: side of a pixel/voxel (physical units, e.g. mm).
    :param float | tuple[float, float] detector_spacing: detector cell size (``(row, col)`` for cone
        beam). Default: ``pixel_size`` times the magnification ``(source_origin + origin_detector) /
        source_origin`` (1 for parallel beam), i.e. one detector cell per pixel at the axis.
    :param float source_origin: source-to-axis distance (fan/cone). Default: twice the image diagonal.
    :param float origin_detector: axis-to-detector distance (fan/cone). Default: the image diagonal.
    :param str projector: ASTRA CPU projector: ``"linear"`` (default), ``"line"``, ``"strip"`` for
        parallel beam, ``"line_fanflat"`` (default), ``"strip_fanflat"`` for fan beam.
    :param int n_threads: threads for the CPU backend (ASTRA releases the GIL); default
        ``torch.get_num_threads()``.
    :param deepinv.physics.NoiseModel noise_model: measurement noise (default none).
    :param str | torch.device device: device of the buffers.
    :param bool, str matrix: CPU 2D projectors only: apply :math:`A` and :math:`A^\top` as sparse matrix
        products (``scipy.sparse``) with the projector's weights, read once from ASTRA
        (``astra.projector.matrix``), instead of calling ASTRA's FP/BP. The same weights, so the same operator
        (relative difference ~1e-7, float32 summation order; the back projection is identical), 4-7x faster
        per call on CPU (256x256, 60 fan-beam views, one thread). ``True``: from the first call. ``"auto"``
        (default): once a geometry has been projected :data:`MATRIX_AUTO_CALLS` times with ASTRA (building
        the matrix costs 20-40 projections, so a physics used for a few calls never pays for it), and only
        when the matrix is estimated below :data:`MATRIX_AUTO_BYTES` (about 105 MB estimated, 82 MB real,
        for 256x256 and 60 views, matrix and transpose). ``False``: never. FBP is not affected.
    :param bool normalize: divide :meth:`A` and :meth:`A_adjoint` by the operator norm :math:`\|A\|`
        (deepinv's convention, as :class:`deepinv.physics.Tomography`), so that :math:`\|A\| = 1` and
        :math:`A^\top y` is on the image's scale. The norm is computed once by power iteration (and
        again when the angles change) and kept in the buffer ``operator_norm`` (1 when ``normalize=False``,
        which keeps the line integrals in physical length units described above). :meth:`fbp` undoes
        the normalisation: it always returns the image in the units of ``x``.
    :param kwargs: passed to :class:`deepinv.physics.LinearPhysics` (``max_iter``, ``tol``, ``solver``).

    Likely mistakes are flagged with a :class:`UserWarning`: angles larger than :math:`2\pi`
    (degrees given for radians) and detectors of 1 to 3 cells. A and its adjoint are new-style
    ``torch.autograd.Function``\ s, so ``torch.func.grad``/``vjp``/``jvp``/``vmap`` and
    :func:`deepinv.physics.forward.adjoint_function` work through them.

    :Examples:

        >>> import math, torch
        >>> from deepinv_mol.physics import AstraCT
        >>> angles = torch.linspace(0, math.pi, 61)[:-1]
        >>> physics = AstraCT((32, 32), angles, backend="cpu", normalize=False)
        >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1.0
        >>> y = physics(x)
        >>> y.shape
        torch.Size([1, 1, 60, 47])
        >>> round(y[0, 0, 0].sum().item())  # every projection integrates the image: 16 x 16 pixels
        256
        >>> physics.adjointness_test(x) < 1e-3
        tensor(True)
        >>> unit = AstraCT((32, 32), angles, backend="cpu")  # normalize=True: ||A|| = 1
        >>> round(unit.compute_norm(x, tol=1e-6, verbose=False).item(), 2)
        1.0
    """

    def __init__(
        self,
        img_size: Sequence[int],
        angles: torch.Tensor | np.ndarray | Sequence[float],
        geometry: str = "parallel",
        n_detectors: int | Sequence[int] | None = None,
        backend: str = "auto",
        pixel_size: float = 1.0,
        detector_spacing: float | Sequence[float] | None = None,
        source_origin: float | None = None,
        origin_detector: float | None = None,
        projector: str | None = None,
        n_threads: int | None = None,
        noise_model: NoiseModel | None = None,
        device: torch.device | str = "cpu",
        normalize: bool = True,
        matrix: bool | str = "auto",
        **kwargs,
    ) -> None:
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        if not (matrix is True or matrix is False or (isinstance(matrix, str) and matrix == "auto")):
            raise ValueError(f"matrix must be True, False or 'auto', got {matrix!r}")
        try:
            import astra  # noqa: F401  (lazy: heavy optional dependency)
        except ImportError as e:
            raise ImportError("AstraCT needs the ASTRA toolbox: pip install astra-toolbox") from e
        # ---- image size
        if isinstance(img_size, torch.Size):
            img_size = tuple(img_size)
        if not isinstance(img_size, (tuple, list)) or len(img_size) not in (2, 3):
            raise ValueError(f"img_size must be (H, W) or (D, H, W), got {img_size!r}")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in img_size):
            raise ValueError(f"img_size must hold positive integers, got {img_size!r}")
        img_size = tuple(int(s) for s in img_size)
        ndim = len(img_size)

        # ---- geometry and backend
        if geometry not in _GEOMETRIES:
            raise ValueError(f"geometry must be one of {_GEOMETRIES}, got {geometry!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if geometry == "fanbeam" and ndim != 2:
            raise ValueError("geometry='fanbeam' is 2D: img_size must be (H, W); use 'cone' for 3D")
        if geometry == "cone" and ndim != 3:
            raise ValueError("geometry='cone' is 3D: img_size must be (D, H, W); use 'fanbeam' for 2D")
        if backend == "cuda":
            _require_cuda(f"AstraCT(geometry={geometry!r}, backend='cuda')")
        if geometry == "cone":
            if backend == "cpu":
                raise ValueError(
                    "geometry='cone' has no CPU implementation in ASTRA (3D projectors are CUDA-only); "
                    "use backend='cuda' on a machine with a GPU"
                )
            _require_cuda("AstraCT(geometry='cone')")
        use_cuda = backend == "cuda" or (backend == "auto" and _cuda_usable())

        # ---- angles
        angles = self._check_angles(angles)
        self._warn_angles(angles)

        # ---- physical sizes
        pixel_size = _positive("pixel_size", pixel_size)
        diag = pixel_size * math.sqrt(img_size[-1] ** 2 + img_size[-2] ** 2)
        if geometry == "parallel":
            if source_origin is not None or origin_detector is not None:
                raise ValueError("source_origin/origin_detector are for fan and cone beams, not parallel")
            source_origin = origin_detector = None
            magnification = 1.0
        else:
            source_origin = _positive("source_origin", source_origin, True) or 2.0 * diag
            origin_detector = _positive("origin_detector", origin_detector, True)
            origin_detector = diag if origin_detector is None else origin_detector
            if source_origin <= diag / 2:
                raise ValueError(
                    f"source_origin={source_origin} puts the source inside the image (half diagonal "
                    f"{diag / 2:.4g}); increase it"
                )
            magnification = (source_origin + origin_detector) / source_origin
        if geometry == "cone":
            if detector_spacing is None:
                detector_spacing = (pixel_size * magnification,) * 2
            elif isinstance(detector_spacing, (tuple, list)):
                if len(detector_spacing) != 2:
                    raise ValueError("detector_spacing for cone beam is a number or (row, col)")
                detector_spacing = tuple(_positive("detector_spacing", s) for s in detector_spacing)
            else:
                detector_spacing = (_positive("detector_spacing", detector_spacing),) * 2
        else:
            if detector_spacing is None:
                detector_spacing = pixel_size * magnification
            if isinstance(detector_spacing, (tuple, list)):
                raise TypeError(f"detector_spacing is one number for geometry={geometry!r}")
            detector_spacing = _positive("detector_spacing", detector_spacing)

        # ---- detector count
        col_spacing = detector_spacing[1] if geometry == "cone" else detector_spacing
        if geometry == "parallel":
            default_cols = math.ceil(diag / col_spacing - 1e-6) + 1
        else:
            half_fan = math.asin(min(1.0, diag / 2 / source_origin))
            half_width = (source_origin + origin_detector) * math.tan(half_fan)
            default_cols = math.ceil(2 * half_width / col_spacing - 1e-6) + 1
        if geometry == "cone":
            z_half = img_size[0] * pixel_size / 2 * (source_origin + origin_detector) / (source_origin - diag / 2)
            default = (math.ceil(2 * z_half / detector_spacing[0] - 1e-6) + 1, default_cols)
            if n_detectors is None:
                n_detectors = default
            elif isinstance(n_detectors, (int, np.integer)) and not isinstance(n_detectors, bool):
                n_detectors = (int(n_detectors), int(n_detectors))
            if not (
                isinstance(n_detectors, (tuple, list))
                and len(n_detectors) == 2
                and all(isinstance(n, (int, np.integer)) and n > 0 for n in n_detectors)
            ):
                raise ValueError(f"n_detectors for cone beam is a positive int or (rows, cols), got {n_detectors!r}")
            n_detectors = tuple(int(n) for n in n_detectors)
        else:
            n_detectors = default_cols if n_detectors is None else n_detectors
            if isinstance(n_detectors, bool) or not isinstance(n_detectors, (int, np.integer)) or n_detectors <= 0:
                raise ValueError(f"n_detectors must be a positive int, got {n_detectors!r}")
            n_detectors = int(n_detectors)

        cols = n_detectors[1] if isinstance(n_detectors, tuple) else n_detectors
        if cols < 4:
            warnings.warn(
                f"AstraCT with {cols} detector cell(s): the sinogram will be truncated to almost nothing "
                f"(the default for img_size={img_size} is {default_cols}); pass n_detectors=None for it",
                UserWarning,
                stacklevel=2,
            )
        # ---- memory, before ASTRA allocates anything
        rows = n_detectors[0] if isinstance(n_detectors, tuple) else (img_size[0] if ndim == 3 else 1)
        needed = 4 * (math.prod(img_size) + rows * cols * angles.shape[0])  # one float32 image + sinogram
        refuse_if_too_large(
            f"AstraCT(img_size={img_size}, {angles.shape[0]} angles, {cols} detectors) (one image and its sinogram)",
            needed,
            "use a smaller img_size or fewer angles",
        )

        # ---- projector
        if use_cuda:
            if projector not in (None, "cuda"):
                raise ValueError(f"projector={projector!r} is a CPU projector; the CUDA backend has its own")
            projector = "cuda"
        elif projector is None:
            projector = _CPU_PROJECTORS[geometry][0]
        elif projector not in _CPU_PROJECTORS[geometry]:
            raise ValueError(f"projector for {geometry} beam on CPU must be one of {_CPU_PROJECTORS[geometry]}")

        super().__init__(img_size=(1,) + img_size, noise_model=noise_model, device=device, **kwargs)
        self.image_shape = img_size
        self.geometry = geometry
        self.backend = "cuda" if use_cuda else "cpu"
        self.pixel_size = pixel_size
        self.detector_spacing = detector_spacing
        self.source_origin = source_origin
        self.origin_detector = origin_detector
        self.n_detectors = n_detectors
        self.projector = projector
        self.n_threads = int(n_threads) if n_threads is not None else torch.get_num_threads()
        self.matrix = matrix
        # float64 so that the geometry handed to ASTRA is exactly what the user gave
        self.register_buffer("angles", angles)
        self._engine_cache = None
        self.normalize = normalize
        self.register_buffer("operator_norm", torch.ones((), dtype=torch.float64))
        self._update_norm()
        self.to(device)

    def _apply(self, fn, recurse=True):
        # angles and operator_norm stay float64 whatever .to(dtype) asks: the geometry handed to ASTRA
        # and the scale are exact; ASTRA computes in float32 and outputs follow the input's dtype
        keep = {k: self._buffers.get(k) for k in ("angles", "operator_norm")}
        super()._apply(fn, recurse)
        for name, value in keep.items():
            if value is not None:
                self._buffers[name] = value.to(device=self._buffers[name].device, dtype=torch.float64)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "operator_norm" not in state_dict:  # a state_dict from before normalisation
            state_dict[prefix + "operator_norm"] = self.operator_norm.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _update_norm(self) -> None:
        r"""``operator_norm`` := :math:`\|A\|` of the unnormalised operator by power iteration (when
        ``normalize``), from a fixed random image; 1 when ``normalize=False``."""
        self.operator_norm = torch.ones((), dtype=torch.float64, device=self.angles.device)
        if not self.normalize or self.angles.device.type == "meta":
            return
        x = torch.randn((1, 1) + self.image_shape, generator=torch.Generator().manual_seed(0))

        def step(x):
            x = x / x.norm()
            z = self._run_astra(self._run_astra(x, "forward"), "adjoint")
            return z, float((x * z).sum())

        with torch.no_grad():
            lam = power_iteration(step, x)
        if not lam > 0:
            raise ValueError("AstraCT: the projector is zero for this geometry (no ray meets the image)")
        self.operator_norm = torch.tensor(math.sqrt(lam), dtype=torch.float64, device=self.angles.device)

    def _project(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        out = self._run_astra(t, "adjoint" if adjoint else "forward")
        return out / self.operator_norm.item() if self.normalize else out

    @staticmethod
    def _warn_angles(angles: torch.Tensor) -> None:
        if angles.abs().max().item() > 2 * math.pi + 1e-6:
            warnings.warn(
                f"AstraCT angles reach {angles.abs().max().item():.4g}, beyond 2*pi: angles are in radians "
                "(convert degrees with torch.deg2rad)",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_angles(angles) -> torch.Tensor:
        if isinstance(angles, (int, float)) or angles is None:
            raise TypeError("angles must be a 1D tensor/array/sequence of angles in radians")
        t = torch.as_tensor(np.asarray(angles) if not isinstance(angles, torch.Tensor) else angles)
        if t.is_complex():
            raise TypeError("angles must be real (radians), got a complex tensor")
        if t.dtype == torch.bool:
            raise TypeError("angles must be real numbers (radians), got booleans")
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"angles must be a non-empty 1D tensor, got shape {tuple(t.shape)}")
        t = t.detach().to("cpu", torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError("angles must be finite")
        return t

    def update_parameters(self, angles: torch.Tensor | Sequence[float] | None = None, **kwargs) -> None:
        r"""Change the projection angles (e.g. per batch, ``physics(x, angles=...)``); the ASTRA
        geometry is rebuilt on the next call.

        :param torch.Tensor angles: new 1D angles in radians (validated like the constructor's).
        """
        if angles is not None:
            angles = self._check_angles(angles)
            self._warn_angles(angles)
            self.angles = angles.to(self.angles.device)
            if self.normalize:
                self._update_norm()
        super().update_parameters(**kwargs)

    def extra_repr(self) -> str:
        return (
            f"image={self.image_shape}, geometry={self.geometry!r}, backend={self.backend!r}, "
            f"angles={self.angles.shape[0]}, detectors={self.n_detectors}, pixel_size={self.pixel_size}"
        )

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        r"""Shape of one sinogram without batch and channel: ``(A, N)`` in 2D, ``(V, A, N)`` in 3D."""
        n_angles = self.angles.shape[0]
        if len(self.image_shape) == 2:
            return (n_angles, self.n_detectors)
        if self.geometry == "cone":
            return (self.n_detectors[0], n_angles, self.n_detectors[1])
        rows = self.image_shape[0]
        return (rows, n_angles, self.n_detectors)

    def _check(self, t: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise TypeError(f"{what} must be real (ASTRA is real-valued), got {t.dtype}")
        if not t.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")
        if t.ndim != len(expected) + 2 or tuple(t.shape[2:]) != expected:
            raise ValueError(f"{what} must have shape (B, C, {', '.join(map(str, expected))}), got {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"AstraCT got an empty batch: {what} of shape {tuple(t.shape)} (B and C must be >= 1)")
        if t.device.type != "meta" and not is_functorch_wrapped(t) and not torch.isfinite(t).all():
            raise ValueError(f"{what} contains NaN or Inf values")

    # ------------------------------------------------------------------ ASTRA geometry
    def _geometry_key(self):
        a = self.angles
        return (a.data_ptr(), a._version, a.device.type, a.shape[0])

    def _astra_geometries(self):
        r"""ASTRA volume and projection geometries (dicts) from the buffers and physical sizes."""
        import astra

        angles = self.angles.detach().cpu().numpy().astype(np.float64)
        ps = self.pixel_size
        if self.geometry == "cone" or (len(self.image_shape) == 3 and self.backend == "cuda"):
            d, h, w = self.image_shape
            vol = astra.create_vol_geom(h, w, d, -w * ps / 2, w * ps / 2, -h * ps / 2, h * ps / 2, -d * ps / 2, d * ps / 2)
            if self.geometry == "cone":
                rows, cols = self.n_detectors
                sr, sc = self.detector_spacing
                proj = astra.create_proj_geom("cone", sc, sr, rows, cols, angles, self.source_origin, self.origin_detector)
            else:
                proj = astra.create_proj_geom("parallel3d", self.detector_spacing, ps, d, self.n_detectors, angles)
            return vol, proj
        h, w = self.image_shape[-2:]
        vol = astra.create_vol_geom(h, w, -w * ps / 2, w * ps / 2, -h * ps / 2, h * ps / 2)
        if self.geometry == "parallel":
            proj = astra.create_proj_geom("parallel", self.detector_spacing, self.n_detectors, angles)
        else:
            proj = astra.create_proj_geom(
                "fanflat", self.detector_spacing, self.n_detectors, angles, self.source_origin, self.origin_detector
            )
        return vol, proj

    def matrix_bytes(self) -> int:
        r"""Estimated bytes of the sparse projection matrix of a 2D CPU projector (float32 weights and int32
        indices; a ray crosses at most about 1.2 x the longer image side pixels per cell of the line kernels)."""
        h, w = self.image_shape[-2:]
        cols = self.n_detectors[1] if isinstance(self.n_detectors, tuple) else self.n_detectors
        # W and its transpose
        return int(2 * 8 * self.angles.shape[0] * cols * 1.2 * max(h, w) * (2 if "strip" in self.projector else 1))

    def _use_matrix(self) -> bool | str:
        if self.backend == "cuda" or self.matrix is False:
            return False
        if self.matrix is True:
            return True
        return "auto" if self.matrix_bytes() <= MATRIX_AUTO_BYTES else False

    def _engine(self):
        r"""The ASTRA engine of the current geometry, rebuilt when the angle buffer changes."""
        key = self._geometry_key()
        if self._engine_cache is None or self._engine_cache[0] != key:
            if self._engine_cache is not None:
                self._engine_cache[1].close()
            if self.angles.device.type == "meta":
                raise RuntimeError("AstraCT on the 'meta' device has no angle values; move it to a real device")
            vol, proj = self._astra_geometries()
            if proj["type"] in ("parallel3d", "cone"):
                engine = _Engine3D(vol, proj)
            else:
                engine = _Engine2D(vol, proj, self.projector, cuda=self.backend == "cuda", n_threads=self.n_threads,
                                    matrix=self._use_matrix())
            self._engine_cache = (key, engine)
        return self._engine_cache[1]

    def __deepcopy__(self, memo):
        # ASTRA projector ids are process-global handles: a copy builds its own engine lazily
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, None if k == "_engine_cache" else copy.deepcopy(v, memo))
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_engine_cache"] = None
        return state

    # ------------------------------------------------------------------ numerics
    def _run_astra(self, t: torch.Tensor, mode: str) -> torch.Tensor:
        r"""Run ``mode`` ("forward", "adjoint", "fbp") on ASTRA: flatten (B, C), float32 numpy, back."""
        if mode == "forward":
            in_shape, out_shape = self.image_shape, self.measurement_shape
        else:
            in_shape, out_shape = self.measurement_shape, self.image_shape
        lead = t.shape[:2]
        engine = self._engine()
        slices = len(self.image_shape) == 3 and isinstance(engine, _Engine2D)
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
        # 3D parallel on CPU: slice d of the volume <-> detector row d, each a 2D problem
        arr = arr.reshape((-1,) + (in_shape[1:] if slices else in_shape))
        arr = np.ascontiguousarray(arr)
        if mode == "forward":
            out = engine.forward(arr)
        elif mode == "adjoint":
            out = engine.adjoint(arr)
        else:
            out = self._fbp_numpy(engine, arr)
        out = torch.from_numpy(out.reshape(tuple(lead) + tuple(out_shape)))
        return out.to(device=t.device, dtype=t.dtype)

    def _fbp_numpy(self, engine, y: np.ndarray) -> np.ndarray:
        if isinstance(engine, _Engine3D):
            if self.geometry == "cone":
                return engine.fdk(y)
            # ASTRA has no 3D parallel FBP
            return _ramp_backprojection(engine, y, self.detector_spacing, self.pixel_size)
        if self.geometry == "parallel" or self.backend == "cuda":
            return engine.fbp(y)
        return self._fanbeam_fbp_cpu(y)

    def _fanbeam_fbp_cpu(self, y: np.ndarray) -> np.ndarray:
        r"""Fan-beam FBP on CPU: direct weighted filtered back projection (flat detector).

        ASTRA's CPU ``FBP`` supports parallel beam only. With :math:`R` the source-to-axis distance,
        :math:`s'` the detector coordinate scaled to the axis (spacing :math:`\Delta' = \Delta R / (R +
        R_d)`) and :math:`U = ((P - S)\cdot c) / R` the depth of pixel :math:`P` along the central ray
        :math:`c` of the source :math:`S` (Kak & Slaney, section 3.4.2):

        .. math:: x(P) \approx \sum_k \Delta\beta_k\, \frac{1}{U^2}\, Q_k(s'(P)),\qquad
                  Q_k = \tfrac12\, \Delta' \Big(h * \big(y_k \cdot \tfrac{R}{\sqrt{R^2 + s'^2}}\big)\Big),

        with :math:`h` the Ram-Lak kernel and :math:`Q_k(s'(P))` interpolated linearly where the ray
        through :math:`P` meets the detector (ASTRA's own source/detector vectors, so the geometry is
        the forward operator's). Needs equally spaced angles over a full turn.

        An earlier version rebinned to parallel beam, interpolating *across views*: with few views
        (16 to 32 over :math:`2\pi`, 22 to 11 degrees apart) that interpolation dominated the error
        (0.25 against 0.12 for parallel beam on a 16x16 disc phantom at 16 views); weighting per view
        keeps fan beam within the parallel-beam error at every view count (tests/test_ct.py).
        """
        import astra

        if y.shape[0] == 0:
            raise ValueError("AstraCT.fbp got an empty batch (no sinogram)")
        beta = self.angles.detach().cpu().numpy()
        n = beta.shape[0]
        step = 2 * math.pi / n
        if n < 2 or not np.allclose(np.diff(beta), step, rtol=0, atol=1e-4 * step):
            raise ValueError(
                "fan-beam FBP on CPU needs equally spaced angles over a full turn (2*pi); "
                "use A_dagger(y, fbp=False) (CG) for other angle sets"
            )
        so, od, du = self.source_origin, self.origin_detector, self.detector_spacing
        nd = self.n_detectors
        _, proj = self._astra_geometries()
        vectors = astra.geom_2vec(proj)["Vectors"]  # (n, 6): source, detector centre, detector u step
        h, w = self.image_shape
        ps = self.pixel_size
        px = (np.arange(w) - (w - 1) / 2) * ps
        py = ((h - 1) / 2 - np.arange(h)) * ps  # row 0 at the top (+y)
        gx, gy = np.meshgrid(px, py)  # (h, w)
        # pre-weighting and ramp filtering of every view (virtual detector at the axis)
        scale = so / (so + od)
        s_virtual = (np.arange(nd) - (nd - 1) / 2) * du * scale
        weighted = y.astype(np.float64) * (so / np.sqrt(so**2 + s_virtual**2))
        filtered = 0.5 * _ramp_filter(weighted, du * scale).astype(np.float64)  # (b, n, nd)
        out = np.zeros((y.shape[0], h, w))
        det_axis = np.arange(nd, dtype=np.float64)
        for k in range(n):
            sx, sy, dx, dy, ux, uy = vectors[k]
            vx, vy = gx - sx, gy - sy  # source -> pixel
            cx, cy = dx - sx, dy - sy
            # detector coordinate t (in cells) where the ray meets the detector line D + t u
            t = ((dx - sx) * vy - (dy - sy) * vx) / (vx * uy - vy * ux)
            index = t + (nd - 1) / 2
            depth = (vx * cx + vy * cy) / math.hypot(cx, cy)  # U * R
            weight = step * (so / depth) ** 2
            for b in range(y.shape[0]):
                out[b] += weight * np.interp(index, det_axis, filtered[b, k], left=0.0, right=0.0)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ deepinv interface
    def A(self, x: torch.Tensor, angles=None, **kwargs) -> torch.Tensor:
        r"""Forward projection (sinogram), differentiable; see the module docstring for the layout.

        :param torch.Tensor x: images ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        :param torch.Tensor angles: optional new angles (radians), kept for later calls.
        :return: (:class:`torch.Tensor`) sinograms ``(B, C, A, N)`` or ``(B, C, V, A, N)``.
        """
        if angles is not None:
            self.update_parameters(angles=angles)
        self._check(x, self.image_shape, "x")
        return _Project.apply(x, self, False)

    def A_adjoint(self, y: torch.Tensor, angles=None, **kwargs) -> torch.Tensor:
        r"""Back projection :math:`A^\top y` (the matched adjoint of :meth:`A`), differentiable.

        :param torch.Tensor y: sinograms ``(B, C, A, N)`` or ``(B, C, V, A, N)``.
        :param torch.Tensor angles: optional new angles (radians), kept for later calls.
        :return: (:class:`torch.Tensor`) images ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        """
        if angles is not None:
            self.update_parameters(angles=angles)
        self._check(y, self.measurement_shape, "y")
        return _Project.apply(y, self, True)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        r"""Filtered back projection (Ram-Lak), in the units of the image; not differentiable.

        ASTRA's ``FBP`` (parallel, CPU), ``FBP_CUDA`` (2D, GPU), ``FDK_CUDA`` (cone beam); fan beam on
        CPU rebins to parallel beam first (needs equally spaced angles over :math:`2\pi`); 3D parallel
        on CPU runs slice by slice, on GPU as ramp filter + 3D back projection.

        :param torch.Tensor y: sinograms ``(B, C, A, N)`` or ``(B, C, V, A, N)``.
        :return: (:class:`torch.Tensor`) images.
        """
        self._check(y, self.measurement_shape, "y")
        with torch.no_grad():
            # undo the normalisation: FBP inverts the operator in physical units
            return self._run_astra(y * self.operator_norm.item() if self.normalize else y, "fbp")

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:
        r"""Least-squares solution of :math:`Ax = y` by CG (deepinv's), or FBP/FDK when ``fbp=True``.

        :param torch.Tensor y: sinograms.
        :param bool fbp: use :meth:`fbp` (fast, approximate) instead of the least-squares solver.
        :param kwargs: ``solver``, ``max_iter``, ``tol``, ... of :meth:`deepinv.physics.LinearPhysics.A_dagger`.
        :return: (:class:`torch.Tensor`) images.
        """
        if fbp:
            return self.fbp(y)
        kwargs.setdefault("solver", "CG")
        return super().A_dagger(y, **kwargs)
