r"""Pretrained reconstructors: the model registry and the weights I/O (reader and writer of ``weights/``).

Learned models (names usable by ``deepinv-mol eval``, ``demo`` and ``certify``):

* ``mol-penalty`` -- :class:`deepinv_mol.optim.MOL` with an unconstrained :class:`~deepinv_mol.models.MonotoneCNN`
  trained with :class:`~deepinv_mol.loss.LipschitzPenalty`;
* ``mol-strict`` -- MOL with the spectrally normalised (certified) network;
* ``luser`` -- :class:`deepinv_mol.optim.LUSER`;
* ``modl`` -- :class:`deepinv_mol.optim.baselines.MoDLBaseline` (deepinv's MoDL, 10 unrolled iterations, the
  *same* CNN as MOL and MOL's starting image: only the algorithm around the network differs).

Classical baselines (no weights, :mod:`deepinv_mol.optim.baselines`): ``adjoint``, ``cg`` and ``fbp`` (CT only).

The weights of every learned model for a task live in ``weights/<task>__<model>.pt`` (a plain ``state_dict``,
read with ``torch.load(weights_only=True)``); ``weights/manifest.json`` records, for each file, its checksum, the
model's **complete** configuration (every constructor argument, from ``get_config()`` of the model and of its
network, so that a change of a class default cannot change a shipped model), the exact training command, the
training time and settings, and the validation PSNR curve. :func:`save_pretrained` writes both (used by
``deepinv-mol train --export``), :func:`load_pretrained` reads them.

Configuration layout (``config`` of a manifest entry, also what :func:`default_config` returns and
:func:`build_model` takes): ``{"cnn": MonotoneCNN kwargs, "mol": MOL kwargs}`` for MOL,
``{"cnn": ..., "modl": MoDLBaseline kwargs}`` for MoDL, ``{"luser": LUSER kwargs}`` for LUSER. A key that the
class does not take is an error (:class:`ValueError` naming it), never silently dropped.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from deepinv.models import Reconstructor

from .optim.baselines import AdjointReconstruction, CGReconstruction, FBPReconstruction

__all__ = [
    "LEARNED_MODELS",
    "CLASSICAL_MODELS",
    "MANIFEST_NAME",
    "WEIGHTS_ENV",
    "ENTRY_KEYS",
    "MissingWeightsError",
    "WeightsFileError",
    "default_config",
    "build_model",
    "model_config",
    "complete_config",
    "complete_scale_options",
    "weights_dir",
    "read_manifest",
    "available_pretrained",
    "file_sha256",
    "load_weights",
    "save_pretrained",
    "write_atomic",
    "load_pretrained",
    "get_reconstructor",
    # re-exported from deepinv_mol.optim.baselines (their home) for existing callers
    "AdjointReconstruction",
    "CGReconstruction",
    "FBPReconstruction",
]

LEARNED_MODELS = ("mol-penalty", "mol-strict", "luser", "modl")
CLASSICAL_MODELS = ("cg", "adjoint", "fbp")

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_NAME = "manifest.json"
WEIGHTS_ENV = "DEEPINV_MOL_WEIGHTS"

#: keys a manifest entry may hold (anything else is refused by :func:`load_pretrained`)
ENTRY_KEYS = (
    "file", "sha256", "size_bytes", "config", "training", "command", "train_seconds", "steps_done", "val_psnr",
    "selected", "val_psnr_selected",
)

#: configuration sections of each learned model
_SECTIONS = {"mol-penalty": ("cnn", "mol"), "mol-strict": ("cnn", "mol"), "modl": ("cnn", "modl"), "luser": ("luser",)}


class MissingWeightsError(FileNotFoundError):
    r"""Raised when a known model has no shipped weights for a task (the model exists, it was not trained)."""


class WeightsFileError(ValueError):
    r"""A weights file exists but cannot be used: empty, text, truncated, random bytes, not a ``state_dict``,
    objects other than tensors, or tensors that do not fit the model. The message names the file."""


# ----------------------------------------------------------------------------------------------------------
# architectures and their configurations


def _section_class(section: str):
    if section == "cnn":
        from .models import MonotoneCNN

        return MonotoneCNN
    if section == "mol":
        from .optim import MOL

        return MOL
    if section == "modl":
        from .optim.baselines import MoDLBaseline

        return MoDLBaseline
    from .optim import LUSER

    return LUSER


def _accepted(cls) -> list[str]:
    # keyword arguments of a section: the constructor's, minus sub-networks and the device
    skip = {"self", "device", "denoiser", "regularizer"}
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_config(name: str, config, where: str = "config") -> None:
    if not isinstance(config, dict):
        raise TypeError(f"{where} of model {name!r} must be a dict, got {type(config).__name__}")
    sections = _SECTIONS[name]
    for section in config:
        if section not in sections:
            raise ValueError(f"unknown key {section!r} in {where} of model {name!r}: expected sections {', '.join(sections)}")
    for section in sections:
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise TypeError(f"{where}[{section!r}] of model {name!r} must be a dict, got {type(values).__name__}")
        cls = _section_class(section)
        accepted = _accepted(cls)
        for key in values:
            if key not in accepted:
                raise ValueError(
                    f"unknown key {key!r} in {where}[{section!r}] of model {name!r}: {cls.__name__} takes "
                    f"{', '.join(accepted)}"
                )


def _defaults(cls) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: params[k].default for k in _accepted(cls) if params[k].default is not inspect.Parameter.empty}


def _object_config(obj, given: dict) -> dict:
    # the object's own complete configuration when it can report it, else its constructor's defaults overridden by
    # the values it was built with (the same thing for a class without get_config)
    if hasattr(obj, "get_config"):
        cfg = dict(obj.get_config())
    else:
        cfg = _defaults(type(obj)) | dict(given)
    for key in ("device", "denoiser", "regularizer"):
        cfg.pop(key, None)
    return json.loads(json.dumps(cfg))  # plain JSON values (tuples -> lists), fails loudly if not serialisable


def model_config(name: str, model: torch.nn.Module, given: dict | None = None) -> dict:
    r"""The complete configuration of a learned model built by :func:`build_model`: every constructor argument
    of the model and of its network, such that ``build_model(name, config=model_config(name, model))`` plus the
    model's ``state_dict`` rebuilds it exactly.

    :param str name: one of :data:`LEARNED_MODELS`.
    :param torch.nn.Module model: the model.
    :param dict given: the configuration it was built from (used for a class that has no ``get_config``).
    :return: a JSON-serialisable dict in the layout of :func:`default_config`.
    """
    _check_name(name, LEARNED_MODELS)
    given = given or {}
    if name == "luser":
        return {"luser": _object_config(model, given.get("luser", {}))}
    if name == "modl":
        cnn = model.prior[0].denoiser
        return {"cnn": _object_config(cnn, given.get("cnn", {})), "modl": _object_config(model, given.get("modl", {}))}
    return {"cnn": _object_config(model.denoiser, given.get("cnn", {})), "mol": _object_config(model, given.get("mol", {}))}


def complete_config(name: str, config: dict) -> dict:
    r"""Fill a (partial) configuration with every default it relies on: :func:`model_config` of the model it
    builds.

    :param str name: one of :data:`LEARNED_MODELS`.
    :param dict config: a configuration (layout of :func:`default_config`).
    :return: the complete configuration.
    :raises ValueError: a key the classes do not take.
    """
    return model_config(name, build_model(name, config=config), given=config)


def default_config(name: str, channels: int = 2, data_weight: float = 10.0, scale_reference: float = 1.0) -> dict:
    r"""Complete default configuration of a learned model (what ``deepinv-mol train`` builds).

    MOL follows the authors' network (5 conv layers 3×3, ReLU, no batch-norm) at width 32 to keep the
    shipped weights small and CPU training feasible; :math:`\alpha = 1` is MOL's fastest contraction
    (factor :math:`\mathrm{Lip}(H)`, see the theory page), Anderson acceleration on. MoDL uses the same network
    with data-step size ``data_weight`` (deepinv's 1 ignores the operator's scale, which Adam at lr 1e-3 cannot
    undo in a short training) and MOL's start image. LUSER uses its class defaults (the benchmarked
    configuration) at width 32 (the default 64 makes 5 untied regularizers weigh 4 MB).

    :param str name: one of :data:`LEARNED_MODELS`.
    :param int channels: image channels (2 for complex MRI, 1 for CT).
    :param float data_weight: initial data weight: MOL's :math:`\lambda` (with :math:`\alpha = 1`) and
        MoDL's data-step size, so both start from the same data term. It depends on the operator's scale:
        ``deepinv-mol train`` passes the task's :attr:`deepinv_mol.tasks.Task.data_weight`.
    :param float scale_reference: the models' ``scale_reference`` (the intensity statistic of the training data,
        :data:`deepinv_mol.optim.scaling.TASK_SCALE_REFERENCE` for the package's tasks); every model is
        ``scale_equivariant``.
    :return: a JSON-serialisable dict, the ``config`` stored in the manifest.

    :Examples:

    >>> from deepinv_mol.pretrained import default_config
    >>> cfg = default_config("modl", channels=1, data_weight=2.0)
    >>> sorted(cfg), cfg["modl"]["stepsize"], cfg["modl"]["min_stepsize"], cfg["cnn"]["constraint"]
    (['cnn', 'modl'], 2.0, 0.2, 'penalty')
    """
    _check_name(name, LEARNED_MODELS)
    cnn = {"channels": int(channels), "width": 32, "depth": 5, "init": "identity"}
    if name in ("mol-penalty", "mol-strict"):
        constraint = "penalty" if name == "mol-penalty" else "strict"
        partial = {
            "cnn": cnn | {"constraint": constraint, "lipschitz": 0.99},
            "mol": {"lambda_": float(data_weight), "alpha": 1.0, "max_iter": 50, "tol": 1e-4, "anderson": True},
        }
    elif name == "modl":
        partial = {
            "cnn": cnn | {"constraint": "penalty"},
            "modl": {"num_iter": 10, "stepsize": float(data_weight), "init_max_iter": 20, "init_eps": 1e-2},
        }
    else:
        partial = {"luser": {"num_iter": 5, "channels": int(channels), "regularizer_kwargs": {"width": 32}}}
    partial[_SECTIONS[name][-1]].update(scale_equivariant=True, scale_reference=float(scale_reference))
    return complete_config(name, partial)


def complete_scale_options(name: str, task: str, config: dict) -> dict:
    r"""A manifest configuration with the intensity-scale options filled in where it predates them: a missing
    ``scale_equivariant`` becomes ``True`` (the benchmarked default) and a missing ``scale_reference`` the task's
    :data:`deepinv_mol.optim.scaling.TASK_SCALE_REFERENCE` (the statistic of the data the weights were trained on),
    so that an old entry loads as the model the package benchmarks. Values present are kept.

    :param str name: one of :data:`LEARNED_MODELS`.
    :param str task: the task the weights were trained on.
    :param dict config: the manifest's configuration (not modified).
    :return: a new configuration dict.

    :Examples:

    >>> from deepinv_mol.pretrained import complete_scale_options
    >>> complete_scale_options("modl", "ct-sparse-view", {"cnn": {}, "modl": {"num_iter": 10}})["modl"]
    {'num_iter': 10, 'scale_equivariant': True, 'scale_reference': 0.5}
    """
    from .optim.scaling import TASK_SCALE_REFERENCE

    _check_name(name, LEARNED_MODELS)
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    section = dict(config.get(_SECTIONS[name][-1], {}))
    section.setdefault("scale_equivariant", True)
    section.setdefault("scale_reference", float(TASK_SCALE_REFERENCE.get(task, 1.0)))
    config[_SECTIONS[name][-1]] = section
    return config


def build_model(name: str, channels: int = 2, config: dict | None = None) -> Reconstructor:
    r"""Build an untrained learned reconstructor.

    :param str name: one of :data:`LEARNED_MODELS`.
    :param int channels: image channels (2 for complex MRI, 1 for CT); ignored when ``config`` is given.
    :param dict config: configuration in the layout of :func:`default_config` (the manifest's ``config``);
        missing keys take the classes' defaults.
    :return: a :class:`deepinv.models.Reconstructor` called as ``model(y, physics)``.
    :raises ValueError: unknown model name, or a configuration key the classes do not take.
    """
    _check_name(name, LEARNED_MODELS)
    config = default_config(name, channels) if config is None else config
    _check_config(name, config)
    if name == "luser":
        return _section_class("luser")(**config.get("luser", {}))
    cnn = _section_class("cnn")(**config.get("cnn", {}))
    if name == "modl":
        return _section_class("modl")(denoiser=cnn, **config.get("modl", {}))
    return _section_class("mol")(denoiser=cnn, **config.get("mol", {}))


# ----------------------------------------------------------------------------------------------------------
# weights I/O


def weights_dir() -> Path:
    r"""The folder holding the weights and their manifest: ``$DEEPINV_MOL_WEIGHTS`` when set (e.g. a folder
    written by ``deepinv-mol train --export``), else the weights shipped inside the installed package."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else _WEIGHTS_DIR


def read_manifest(directory: str | Path | None = None) -> dict:
    r"""The weights manifest: ``{"<task>/<model>": {"file", "sha256", "config", "command", "train_seconds", ...}}``.

    :param str directory: folder to read (default: :func:`weights_dir`).
    :return: the manifest's ``"models"`` dict (empty if there is no manifest).
    :raises ValueError: the manifest exists but is not valid JSON with a ``"models"`` dict.
    """
    path = Path(directory or weights_dir()) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        models = json.loads(path.read_text())["models"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed weights manifest {path}: {type(err).__name__}: {err}") from err
    if not isinstance(models, dict):
        raise ValueError(f"malformed weights manifest {path}: 'models' must be an object, got {type(models).__name__}")
    return models


def available_pretrained(directory: str | Path | None = None) -> list[tuple[str, str]]:
    r"""``(task, model)`` pairs with weights.

    :param str directory: folder to read (default: :func:`weights_dir`).
    """
    return sorted(tuple(key.split("/", 1)) for key in read_manifest(directory))


def file_sha256(path: str | Path) -> str:
    r"""SHA-256 hex digest of a file (checked when loading weights).

    :param str path: the file.
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    r"""Write ``data`` to a temporary file next to ``path``, then ``os.replace``: a crash leaves the old file.

    :param str path: destination.
    :param bytes data: content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    r"""Read a ``state_dict`` with ``torch.load(weights_only=True)`` (no code from files), on the CPU.

    :param str path: the weights file.
    :return: the ``state_dict`` (names -> tensors).
    :raises MissingWeightsError: the file does not exist.
    :raises WeightsFileError: empty, text, truncated or random bytes, objects other than tensors, or not a dict of
        tensors; the message names the file and the problem.

    :Examples:

    >>> import tempfile, pathlib
    >>> from deepinv_mol.pretrained import load_weights
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
    >>> _ = bad.write_text("not weights")
    >>> load_weights(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deepinv_mol.pretrained.WeightsFileError: weights file .../w.pt is a text file, not PyTorch weights (starts with 'not weights')
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise WeightsFileError(f"weights file {path} is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsFileError(
                f"weights file {path} is not a PyTorch weights file (unknown format, {size} bytes of binary data)"
            ) from None
        raise WeightsFileError(
            f"weights file {path} is a text file, not PyTorch weights (starts with {text[:40].splitlines()[0]!r})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsFileError(
            f"weights file {path} holds objects other than tensors, refused (only plain state_dicts are loaded, "
            f"never code): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise WeightsFileError(
            f"weights file {path} is truncated or corrupted ({size} bytes): {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsFileError(
            f"weights file {path} does not hold a state_dict (a dict of names to tensors), got {type(state).__name__}"
        )
    return state


def _load_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsFileError(f"weights file {path} does not fit the model of its configuration: {err}") from err


def save_pretrained(
    model: torch.nn.Module | dict,
    directory: str | Path,
    task: str,
    name: str,
    config: dict,
    metadata: dict | None = None,
) -> dict:
    r"""Write ``<directory>/<task>__<name>.pt`` (a plain ``state_dict``) and its entry ``"<task>/<name>"`` in
    ``<directory>/manifest.json`` (both atomically), with the model's complete configuration.

    The state is checked to load into the model built from ``config`` before anything is written.

    :param model: the trained model or its ``state_dict``.
    :param str directory: the weights folder (``deepinv_mol/weights`` for shipped weights).
    :param str task: task name.
    :param str name: one of :data:`LEARNED_MODELS`.
    :param dict config: the configuration the model was built from (completed with :func:`complete_config`).
    :param dict metadata: further entry fields among :data:`ENTRY_KEYS` (``training``, ``command``,
        ``train_seconds``, ``steps_done``, ``val_psnr``, ``selected``, ``val_psnr_selected``).
    :return: the manifest entry.
    :raises ValueError: unknown model name, configuration or metadata key, or a state that does not fit.
    """
    _check_name(name, LEARNED_MODELS)
    metadata = dict(metadata or {})
    unknown = [k for k in metadata if k not in ENTRY_KEYS or k in ("file", "sha256", "size_bytes", "config")]
    if unknown:
        raise ValueError(f"unknown manifest entry field {unknown[0]!r}: expected among {', '.join(ENTRY_KEYS[4:])}")
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    built = build_model(name, config=config)
    full = model_config(name, built, given=config)
    _load_state(built, state, Path(f"<{task}/{name}>"))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file = f"{task}__{name}.pt"
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buffer)
    data = buffer.getvalue()
    write_atomic(directory / file, data)
    entry = {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "config": full}
    entry.update(metadata)
    manifest_path = directory / MANIFEST_NAME
    models = read_manifest(directory)
    models[f"{task}/{name}"] = entry
    text = json.dumps({"models": dict(sorted(models.items()))}, indent=1) + "\n"
    write_atomic(manifest_path, text.encode())
    return entry


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
    :raises ValueError: unknown model name or task, unknown key in the manifest entry or its configuration, or a
        checksum mismatch.
    :raises MissingWeightsError: the model is known but no weights were shipped for this task.
    :raises WeightsFileError: the weights file is unusable (the message names it and says why).

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
    key = f"{task}/{name}"
    entry = read_manifest(directory).get(key)
    if entry is None:
        shipped = ", ".join(f"{m} ({t})" for t, m in available_pretrained(directory)) or "none"
        raise MissingWeightsError(f"no weights for model '{name}' on task '{task}' in {directory} (available: {shipped})")
    where = f"manifest entry {key!r} of {directory / MANIFEST_NAME}"
    for field in entry:
        if field not in ENTRY_KEYS:
            raise ValueError(f"unknown key {field!r} in {where}: expected among {', '.join(ENTRY_KEYS)}")
    if "file" not in entry or "config" not in entry:
        raise ValueError(f"{where} lacks {'file' if 'file' not in entry else 'config'}")
    _check_config(name, entry["config"], where=f"config of {where}")
    path = directory / entry["file"]
    if not path.exists():
        raise MissingWeightsError(f"weights file {path} listed in the manifest is missing")
    if "sha256" in entry and file_sha256(path) != entry["sha256"]:
        raise ValueError(f"weights file {path} does not match its manifest checksum (corrupted or replaced)")
    state = load_weights(path)
    model = build_model(name, config=complete_scale_options(name, task, entry["config"]))
    _load_state(model, state, path)
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
