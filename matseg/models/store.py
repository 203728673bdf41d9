"""The weights store: a folder with ``manifest.json`` and ``<name>.pt``, saved and loaded.

Weights are plain state dicts loaded with ``torch.load(weights_only=True)`` after
their sha256 is checked against the manifest, so a tampered or pickled file is
refused before it is unpickled. Segmenters and the selector load through
:func:`load_tensors`, the one loading path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from importlib import resources
from pathlib import Path

import torch

from matseg.errors import MatsegError
from matseg.io.guard import output_kind, replace_file
from matseg.models.segmenter import Segmenter
from matseg.models.unet import UNet2d

MANIFEST = "manifest.json"


def default_weights_dir() -> Path:
    """The weights bundled with matseg (trained by ``matseg train``, see docs/models.md)."""
    return Path(str(resources.files("matseg.models") / "weights"))


def is_bundled(folder: str | os.PathLike | None) -> bool:
    """Whether ``folder`` is the bundled weights folder (None: the default, so it is), however spelt."""
    return folder is None or Path(folder).absolute().resolve() == default_weights_dir().absolute().resolve()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_folder(folder: str | os.PathLike) -> None:
    """Refuse to write weights into an existing folder that is not empty and not matseg's weights."""
    folder = Path(folder)
    occupied = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    if occupied and output_kind(folder) != "weights":
        raise MatsegError(
            f"{folder} exists and is not a matseg weights folder (no matseg {MANIFEST}); "
            "matseg writes weights only into a new, empty or matseg weights folder: choose another"
        )


def save_segmenter(model: Segmenter, folder: str | os.PathLike, record: dict | None = None) -> Path:
    """Write ``<folder>/<name>.pt`` and add its entry (sha256, architecture) to the manifest.

    Both files are replaced whole (written aside, then renamed): a kill leaves the old
    weights and manifest or the new ones, never a manifest naming a torn file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model.name}.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    replace_file(path, buffer.getvalue())
    manifest = read_manifest(folder) if (folder / MANIFEST).exists() else {}
    entry = {
        "file": path.name,
        "sha256": sha256_of(path),
        "architecture": dict(model.net.config),
        "phases": list(model.phases),
        "params": model.n_params,
    }
    entry.update(record or {})
    manifest[model.name] = entry
    replace_file(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise MatsegError(f"weights folder {folder} has no {MANIFEST}; train one with 'matseg train'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MatsegError(f"{path} is not valid JSON: {err}") from None


def load_tensors(path: Path, sha256: str, what: str) -> tuple[dict, str]:
    """A state dict from ``path``, after checking its sha256; tensors only (``weights_only=True``).

    Returns the state and the file's sha256; raises MatsegError naming ``what``
    when the file is missing, altered, or holds pickled objects.
    """
    if not path.is_file():
        raise MatsegError(f"{what} {path} is missing")
    digest = sha256_of(path)
    if digest != sha256:
        raise MatsegError(
            f"{what} {path} has sha256 {digest[:12]}..., manifest says "
            f"{sha256[:12]}...; the file was changed or corrupted"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = next(
            (line.strip() for line in str(err).splitlines() if "Unpickler error" in line), type(err).__name__
        )
        raise MatsegError(f"{what} {path} holds more than tensors; refusing it ({reason})") from None
    return state, digest


def load_segmenter(name: str, folder: str | os.PathLike | None = None) -> Segmenter:
    """Load segmenter ``name`` from a weights folder (default: the bundled weights).

    The file's sha256 must match the manifest, and it is read with
    ``torch.load(weights_only=True)``.

    Raises
    ------
    MatsegError
        If the model is not in the manifest, the file is missing or altered, or it
        holds anything but tensors.
    """
    folder = Path(folder) if folder is not None else default_weights_dir()
    manifest = read_manifest(folder)
    if name not in manifest:
        raise MatsegError(
            f"model '{name}' not in {folder / MANIFEST}; available: "
            + ", ".join(sorted(n for n, e in manifest.items() if isinstance(e, dict) and "architecture" in e))
        )
    entry = manifest[name]
    path = folder / entry["file"]
    state, digest = load_tensors(path, entry["sha256"], "weights file")
    arch = entry["architecture"]
    net = UNet2d(**arch)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise MatsegError(f"weights file {path} does not fit the recorded architecture: {err}") from None
    net.eval()
    return Segmenter(name=name, net=net, phases=tuple(entry["phases"]), sha256=digest, record=entry)
