"""Find the dataset an HDF5 input names, through the file's external links.

h5py follows an external link (a dataset kept in another file) when it is opened,
but its ``visititems`` walks the file's own objects only: the datasets links lead
to are looked up here, and a link that leads nowhere is said by name.
"""

from __future__ import annotations

from pathlib import Path

from matseg.errors import MatsegError


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file, whatever its suffix."""
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def open_dataset(path: Path, inner: str):
    """The open file ``path`` and its dataset ``inner`` (or its only dataset, without ``inner``).

    Returns
    -------
    (h5py.File, h5py.Dataset)
        The file stays open: the dataset is read through it as tiles need it.

    Raises
    ------
    MatsegError
        If the file cannot be opened, holds no or several datasets and none is named, the
        named one is missing, or an external link it would be read through leads nowhere.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise MatsegError(f"cannot open HDF5 file {path}: {err}") from None
    try:
        names, dangling = _datasets(handle, path)
        if not inner:
            if not names and dangling:
                name, problem = next(iter(dangling.items()))
                raise MatsegError(f"{path} holds no dataset: {name} is an {problem}")
            if len(names) != 1:
                listing = ", ".join(names) or "none"
                raise MatsegError(
                    f"{path} holds {len(names)} datasets ({listing}); name one as {path}:/dataset"
                )
            inner = names[0]
        node = handle.get(inner)
        if not isinstance(node, h5py.Dataset):
            name = "/" + inner.strip("/")
            if name in dangling:
                raise MatsegError(f"HDF5 dataset '{name}' in {path} is an {dangling[name]}")
            listing = ", ".join(names) or "none"
            raise MatsegError(f"HDF5 dataset '/{inner.strip('/')}' not found in {path}; datasets: {listing}")
    except BaseException:
        handle.close()
        raise
    return handle, node


def _datasets(handle, path: Path) -> tuple[list[str], dict[str, str]]:
    """The file's datasets, those its external links lead to included (through groups kept
    in other files and their own links), and its external links that lead nowhere, each with
    the line that says so."""
    names: list[str] = []
    dangling: dict[str, str] = {}
    _walk(handle, "", names, dangling, [])
    return sorted(names), dangling


def _walk(group, prefix: str, names: list, dangling: dict, seen: list) -> None:
    """Add ``group``'s datasets to ``names`` as ``prefix/name``, and follow its external links.
    A group inside one already walked (reached again through a link, e.g. one back to the file
    opened) is not walked again: its datasets are listed once, under their first names."""
    import h5py

    file = Path(group.file.filename).resolve()  # h5py names a linked file as the link spells it
    if any(file == f and (group.name + "/").startswith(g.rstrip("/") + "/") for f, g in seen):
        return
    seen.append((file, group.name))
    group.visititems(lambda n, obj: names.append(f"{prefix}/{n}") if isinstance(obj, h5py.Dataset) else None)

    def external(name: str, link) -> None:
        if not isinstance(link, h5py.ExternalLink):
            return
        try:
            target = group[name]  # h5py opens the other file here
        except (KeyError, OSError):
            dangling[f"{prefix}/{name}"] = _dangling(Path(group.file.filename), link)
            return
        if isinstance(target, h5py.Dataset):
            names.append(f"{prefix}/{name}")
        elif isinstance(target, h5py.Group):  # a group kept in another file: its datasets and links
            _walk(target, f"{prefix}/{name}", names, dangling, seen)

    group.visititems_links(external)


def _dangling(path: Path, link) -> str:
    """What is wrong with an external link of ``path`` that leads nowhere: its file or its object."""
    target = Path(link.filename)
    # HDF5 looks for a relative target beside the linking file, then in the working folder
    places = [target] if target.is_absolute() else [path.parent / target, target]
    where = f"external link to {link.path} in {link.filename}"
    if not any(p.is_file() for p in places):
        return f"{where}, which is not found beside {path.name}: put it there, or read the dataset's own file"
    return f"{where}, which has no {link.path}"
