r"""Pretrained reconstructors: shipped weights (``deepinv_mol/weights/``) -> ready deepinv ``Reconstructor``.

Learned models (names usable by ``deepinv-mol eval``, ``demo`` and ``certify``):

* ``mol-penalty`` -- :class:`deepinv_mol.optim.MOL` with an unconstrained :class:`~deepinv_mol.models.MonotoneCNN`
  trained with :class:`~deepinv_mol.loss.LipschitzPenalty`;
* ``mol-strict`` -- MOL with the spectrally normalised (certified) network;
* ``luser`` -- :class:`deepinv_mol.optim.LUSER`;
* ``modl`` -- deepinv's :class:`deepinv.models.MoDL` with 10 unrolled iterations, the *same* CNN as MOL and
  MOL's starting image (:func:`deepinv_mol.optim.mol.cg_start`; a fair comparison: only the algorithm around
  the network differs).

Classical baselines (no weights): ``adjoint`` (zero-filled / back-projected image :math:`A^H y`, rescaled by
the scalar that best fits the measurements), ``cg``
(conjugate gradient on the lightly Tikhonov-regularised normal equations) and ``fbp`` (filtered
back-projection, CT only).

The weights of every learned model for a task live in ``weights/<task>__<model>.pt``; ``weights/manifest.json``
records, for each file, the model configuration, the exact training command, the training time, the image
and batch sizes, the number of steps and the validation PSNR curve.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from deepinv.models import Reconstructor

LEARNED_MODELS = ("mol-penalty", "mol-strict", "luser", "modl")
CLASSICAL_MODELS = ("cg", "adjoint", "fbp")

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_NAME = "manifest.json"


class MissingWeightsError(FileNotFoundError):
    r"""Raised when a known model has no shipped weights for a task (the model exists, it was not trained)."""


# ----------------------------------------------------------------------------------------------------------
# architectures


def default_config(name: str, channels: int = 2, data_weight: float = 10.0) -> dict:
    r"""Default architecture and solver settings of a learned model (what ``deepinv-mol train`` builds).

    MOL follows the authors' network (5 conv layers 3×3, ReLU, no batch-norm) at width 32 to keep the
    shipped weights small and CPU training feasible; :math:`\alpha = 1` is MOL's fastest contraction
    (factor :math:`\mathrm{Lip}(H)`, see the theory page), Anderson acceleration on.

    :param str name: one of :data:`LEARNED_MODELS`.
    :param int channels: image channels (2 for complex MRI, 1 for CT).
    :param float data_weight: initial data weight: MOL's :math:`\lambda` (with :math:`\alpha = 1`) and
        MoDL's data-step size, so both start from the same data term. It depends on the operator's scale:
        ``deepinv-mol train`` passes the task's :attr:`deepinv_mol.tasks.Task.data_weight`.
    :return: a JSON-serialisable dict, the ``config`` stored in the manifest.
    """
    _check_name(name, LEARNED_MODELS)
    cnn = {"channels": int(channels), "width": 32, "depth": 5, "init": "identity"}
    if name in ("mol-penalty", "mol-strict"):
        constraint = "penalty" if name == "mol-penalty" else "strict"
        return {
            "cnn": cnn | {"constraint": constraint, "lipschitz": 0.99},
            "mol": {"lambda_": float(data_weight), "alpha": 1.0, "max_iter": 50, "tol": 1e-4, "anderson": True},
        }
    if name == "modl":
        # the step size gamma of MoDL's data step (I + gamma A^H A)^{-1}(z + gamma A^H y) starts at MOL's
        # alpha * lambda (deepinv's 1 ignores the operator's scale, which Adam at lr 1e-3 cannot undo in a short
        # training); the start image is MOL's (cg_start)
        return {
            "cnn": cnn | {"constraint": "penalty"},
            "modl": {"num_iter": 10, "stepsize": float(data_weight), "init": {"max_iter": 20, "eps": 1e-2}},
        }
    # step size 1/||A||^2 (power method at the first call): a fixed 1.0 diverges when ||A||^2 > 2
    # width 32 like MOL's network (the default 64 makes 5 untied regularizers weigh 4 MB); CG data consistency:
    # a gradient step tuned to 1/||A||^2 at the training crop size diverges on larger images (||A|| grows with them)
    return {
        "luser": {
            "num_iter": 5,
            "channels": int(channels),
            "data_consistency": "cg",
            "init": "cg",
            "regularizer_kwargs": {"width": 32},
        }
    }


def build_model(name: str, channels: int = 2, config: dict | None = None) -> Reconstructor:
    r"""Build an untrained learned reconstructor (the architecture that the shipped weights fit).

    :param str name: one of :data:`LEARNED_MODELS`.
    :param int channels: image channels (2 for complex MRI, 1 for CT); ignored when ``config`` is given.
    :param dict config: settings as returned by :func:`default_config` (the manifest's ``config``).
    :return: a :class:`deepinv.models.Reconstructor` called as ``model(y, physics)``.
    :raises ValueError: unknown model name.
    """
    _check_name(name, LEARNED_MODELS)
    config = default_config(name, channels) if config is None else config
    if name in ("mol-penalty", "mol-strict", "modl"):
        from .models import MonotoneCNN

        cnn = MonotoneCNN(**config["cnn"])
        if name == "modl":
            from deepinv.models import MoDL

            modl = MoDL(denoiser=cnn, num_iter=int(config["modl"]["num_iter"]))
            # MOL's start (not deepinv's A^H y, off by the scale of A^H A): see deepinv_mol.optim.mol.cg_start
            modl.custom_init = _ModlStart(**config["modl"].get("init", {}))
            gamma = float(config["modl"].get("stepsize", 1.0))
            with torch.no_grad():  # deepinv initialises every HQS step size to 1 (see default_config)
                for step in modl.params_algo["stepsize"]:
                    step.fill_(gamma)
            modl.register_forward_pre_hook(_PositiveSteps(0.1 * gamma))
            return modl
        from .optim import MOL

        return MOL(denoiser=cnn, **config["mol"])
    from .optim import LUSER

    kwargs = dict(config["luser"])
    return LUSER(**_accepted_kwargs(LUSER, kwargs))


class _ModlStart:
    # deepinv's BaseOptim calls custom_init(y, physics); a class (not a lambda) keeps the model picklable
    def __init__(self, max_iter: int = 20, eps: float = 1e-2):
        self.max_iter, self.eps = int(max_iter), float(eps)

    def __call__(self, y, physics):
        from .optim.mol import cg_start

        return cg_start(y, physics, self.max_iter, self.eps)


class _PositiveSteps:
    # deepinv's MoDL learns its step sizes as raw parameters: on ct-sparse-view (step 0.05) Adam at lr 1e-3
    # drove several below zero within 80 steps, the data step (I + gamma A^H A)^{-1} became indefinite and the
    # validation PSNR fell to 1 dB. Projected gradient: before every forward the steps are clamped to >= floor.
    def __init__(self, floor: float):
        self.floor = float(floor)

    def __call__(self, module, args):
        with torch.no_grad():
            for step in module.params_algo["stepsize"]:
                step.clamp_(min=self.floor)


def _accepted_kwargs(cls, kwargs: dict) -> dict:
    # LUSER's regularizer defaults to the image channels only if it accepts them: pass what the signature takes
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


# ----------------------------------------------------------------------------------------------------------
# classical baselines


class AdjointReconstruction(Reconstructor):
    r"""The no-learning image: :math:`A^H y` (zero-filled NUFFT adjoint / unfiltered back-projection), brought to
    the units of the image by the one scalar that best fits the measurements,

    .. math::

        \hat x = c\,A^H y, \qquad c = \arg\min_c \|c\,A A^H y - y\|_2^2
        = \frac{\mathrm{Re}\langle A A^H y, y\rangle}{\|A A^H y\|_2^2}

    (per batch item). Plain :math:`A^H y` is off by the scale of :math:`A^HA` (about 60x for the radial
    NUFFT of ``mri-radial-4x``, :math:`10^3` for fan-beam CT in line-integral units), which makes its PSNR
    meaningless (-20 to -60 dB); the rescaling uses the measurements only, never the ground truth.

    After a call, ``stats = {"iterations": None}`` (not iterative).
    """

    def __init__(self):
        super().__init__()
        self.stats = {"iterations": None}

    def forward(self, y, physics, **kwargs):
        r"""Return :math:`c\,A^H y`.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        self.stats = {"iterations": None}
        x = physics.A_adjoint(y)
        ax = physics.A(x)
        dims = tuple(range(1, y.dim()))
        num = (ax.conj() * y).real.sum(dims)
        den = ax.abs().pow(2).sum(dims)
        c = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))
        return x * c.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)


class CGReconstruction(Reconstructor):
    r"""Conjugate gradient on the lightly Tikhonov-regularised normal equations (CG-SENSE for MRI).

    .. math::

        (A^H A + \varepsilon \|A\|^2 I)\, \hat x = A^H y

    solved with deepinv's :func:`deepinv.optim.linear.conjugate_gradient` (the one CG of the project). The
    relative weight :math:`\varepsilon` makes the baseline independent of the operator's scaling;
    :math:`\|A\|^2` comes from ``physics.compute_sqnorm`` once per physics object. After a call,
    ``stats["iterations"]`` is the number of CG iterations, recovered from the count of normal-operator
    applications because deepinv's CG does not report it.

    :param float eps: relative Tikhonov weight :math:`\varepsilon`.
    :param int max_iter: CG iteration cap.
    :param float tol: relative residual tolerance.
    """

    def __init__(self, eps: float = 1e-2, max_iter: int = 50, tol: float = 1e-5):
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.max_iter, self.tol = float(eps), int(max_iter), float(tol)
        self.stats = {"iterations": None}
        self._norms = {}

    def forward(self, y, physics, **kwargs):
        r"""Solve the regularised normal equations.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        from deepinv.optim.linear import conjugate_gradient

        b = physics.A_adjoint(y)
        key = id(physics)
        if key not in self._norms:
            # a fixed start vector: the estimate, hence the baseline, must not depend on the global RNG
            x0 = torch.randn(b.shape, generator=torch.Generator().manual_seed(0), dtype=b.dtype).to(b.device)
            self._norms[key] = float(physics.compute_sqnorm(x0, verbose=False))
        weight = self.eps * self._norms[key]
        calls = [0]

        def normal(x):
            calls[0] += 1
            return physics.A_adjoint_A(x) + weight * x

        x = conjugate_gradient(normal, b, max_iter=self.max_iter, tol=self.tol)
        self.stats = {"iterations": _cg_iterations(calls[0])}
        return x


def _cg_iterations(calls: int) -> int:
    # deepinv's CG applies the operator once for the initial residual, once per iteration i, and once more
    # to refresh the residual after iterations i = 100, 200, ...: invert that count
    n = max(calls - 1, 0)
    while n > 0 and 1 + n + (n - 1) // 100 > calls:
        n -= 1
    return n


class FBPReconstruction(Reconstructor):
    r"""Filtered back-projection (CT): ``physics.A_dagger(y, fbp=True)`` of :class:`deepinv_mol.physics.AstraCT`.

    After a call, ``stats = {"iterations": None}`` (direct method).
    """

    def __init__(self):
        super().__init__()
        self.stats = {"iterations": None}

    def forward(self, y, physics, **kwargs):
        r"""Return the FBP image.

        :param torch.Tensor y: sinogram.
        :param deepinv_mol.physics.AstraCT physics: CT operator.
        :raises ValueError: the physics has no FBP (not a CT operator).
        """
        import inspect

        if "fbp" not in inspect.signature(physics.A_dagger).parameters:
            raise ValueError(f"'fbp' needs a CT physics with A_dagger(y, fbp=True); got {type(physics).__name__}")
        self.stats = {"iterations": None}
        return physics.A_dagger(y, fbp=True)


# ----------------------------------------------------------------------------------------------------------
# weights


WEIGHTS_ENV = "DEEPINV_MOL_WEIGHTS"


def weights_dir() -> Path:
    r"""The folder holding the weights and their manifest: ``$DEEPINV_MOL_WEIGHTS`` when set (e.g. a folder
    written by ``deepinv-mol train --export``), else the weights shipped inside the installed package."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else _WEIGHTS_DIR


def read_manifest(directory: str | Path | None = None) -> dict:
    r"""The weights manifest: ``{"<task>/<model>": {"file", "sha256", "config", "command", "train_seconds", ...}}``.

    :param str directory: folder to read (default: :func:`weights_dir`).
    :return: the manifest's ``"models"`` dict (empty if no weights are shipped).
    :raises ValueError: the manifest exists but is not valid JSON.
    """
    path = Path(directory or weights_dir()) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())["models"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"malformed weights manifest {path}: {err}") from err


def available_pretrained(directory: str | Path | None = None) -> list[tuple[str, str]]:
    r"""``(task, model)`` pairs with shipped weights.

    :param str directory: folder to read (default: :func:`weights_dir`).
    """
    return sorted(tuple(key.split("/", 1)) for key in read_manifest(directory))


def file_sha256(path: str | Path) -> str:
    r"""SHA-256 hex digest of a file (checked when loading shipped weights).

    :param str path: the file.
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_pretrained(
    name: str, task: str, device: str | torch.device = "cpu", directory: str | Path | None = None
) -> Reconstructor:
    r"""A ready reconstructor trained for a named task, from the weights shipped in the package.

    :param str name: ``"mol-penalty"``, ``"mol-strict"``, ``"luser"`` or ``"modl"``.
    :param str task: a task of :func:`deepinv_mol.tasks.list_tasks`, e.g. ``"mri-radial-4x"``.
    :param str, torch.device device: where to put the model.
    :param str directory: weights folder (default :func:`weights_dir`: ``$DEEPINV_MOL_WEIGHTS`` or the shipped
        one; ``deepinv-mol train --export DIR`` writes the same layout, so a user's own training loads the same way).
    :return: the model in ``eval()`` mode, ``x_hat = model(y, physics)``.
    :raises ValueError: unknown model name or task.
    :raises MissingWeightsError: the model is known but no weights were shipped for this task.

    :Examples:

    >>> from deepinv_mol import load_pretrained
    >>> load_pretrained("unet", "mri-radial-4x")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'unet': expected one of mol-penalty, mol-strict, luser, modl
    """
    _check_name(name, LEARNED_MODELS)
    _check_task(task)
    directory = Path(directory or weights_dir())
    entry = read_manifest(directory).get(f"{task}/{name}")
    if entry is None:
        shipped = ", ".join(f"{m} ({t})" for t, m in available_pretrained(directory)) or "none"
        raise MissingWeightsError(f"no weights for model '{name}' on task '{task}' in {directory} (available: {shipped})")
    path = directory / entry["file"]
    if not path.exists():
        raise MissingWeightsError(f"weights file {path} listed in the manifest is missing")
    if "sha256" in entry and file_sha256(path) != entry["sha256"]:
        raise ValueError(f"weights file {path} does not match its manifest checksum (corrupted or replaced)")
    model = build_model(name, config=entry["config"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def get_reconstructor(name: str, task: str, device: str | torch.device = "cpu") -> Reconstructor:
    r"""Any reconstructor by name: a learned one (:func:`load_pretrained`) or a classical baseline.

    :param str name: one of :data:`LEARNED_MODELS` + :data:`CLASSICAL_MODELS`.
    :param str task: task name (selects the weights of learned models).
    :param str, torch.device device: where to put the model.
    :raises ValueError: unknown name or task.
    :raises MissingWeightsError: learned model without shipped weights for ``task``.
    """
    _check_name(name, LEARNED_MODELS + CLASSICAL_MODELS)
    if name in LEARNED_MODELS:
        return load_pretrained(name, task, device=device)
    _check_task(task)
    return {"cg": CGReconstruction, "adjoint": AdjointReconstruction, "fbp": FBPReconstruction}[name]().to(device)


def _check_name(name, allowed):
    if name not in allowed:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(allowed)}")


def _check_task(task):
    # tasks is imported lazily, only to validate the name (it does not import this module: no cycle)
    from .tasks import list_tasks

    names = list_tasks()
    if task not in names:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(names)}")
