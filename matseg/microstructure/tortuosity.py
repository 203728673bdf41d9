"""Tortuosity factor and effective diffusivity of one phase: a steady diffusion solve on its voxels.

Fixed concentrations 1 and 0 on the phase's voxels in the first and last layer
along the axis, no flux through the other faces nor into other phases; each
pair of face-neighbouring voxels of the phase is joined by a conductance of
area / length. The same finite-difference scheme as PoreSpy's ``tortuosity_fd``
(one node per voxel, boundary values on the first and last layers, so the
driving length is ``L - 1`` voxels), solved by preconditioned conjugate
gradients in PyTorch, on the GPU when there is one (PoreSpy's solver runs on
the CPU through OpenPNM). Clusters that do not connect both faces carry no
flux and are left out, as PoreSpy does; ``eps`` is the fraction of the volume
they leave.

``D_eff / D_bulk = J (L - 1) / (A dC)`` and ``tau = eps D_bulk / D_eff``.
The solve holds the whole volume in memory: about ``BYTES_PER_VOXEL`` bytes
per voxel, reported before it starts; :func:`block_tortuosity` solves
sub-volumes one at a time and combines them (in series along the axis, in
parallel across it), holding one block.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

import numpy as np
import scipy.ndimage as ndi

log = logging.getLogger(__name__)

BYTES_PER_VOXEL = 96  # float64 state (solution, residual, direction, product, preconditioner), 3 edge maps


def solve_memory(shape: tuple[int, ...]) -> int:
    """Bytes the solve needs for a volume of ``shape``."""
    return int(np.prod(shape)) * BYTES_PER_VOXEL


def percolating(mask: np.ndarray, axis: int) -> np.ndarray:
    """The voxels of ``mask`` in face-connected clusters that touch both faces along ``axis``."""
    clusters, _ = ndi.label(mask)
    low = np.unique(np.take(clusters, 0, axis=axis))
    high = np.unique(np.take(clusters, -1, axis=axis))
    keep = np.intersect1d(low[low > 0], high[high > 0])
    return np.isin(clusters, keep)


def tortuosity(
    mask: np.ndarray,
    axis: int,
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    tol: float = 1e-8,
    max_iter: int = 20000,
    device: str | None = None,
) -> dict:
    """Tortuosity factor of the True voxels of ``mask`` along ``axis``.

    Parameters
    ----------
    mask : ndarray of bool (Z, Y, X)
        The conducting phase.
    axis : int
        Direction of the concentration gradient.
    voxel_size : (z, y, x) floats
        Physical voxel size (only ratios matter).
    tol : float
        Stop when the residual's norm is below ``tol`` times the right-hand side's.
    max_iter : int
        Give up after this many iterations (``converged`` False).
    device : str, optional
        Torch device; default ``cuda`` when available, else ``cpu``.

    Returns
    -------
    dict
        ``tau``, ``relative_diffusivity`` (D_eff / D_bulk), ``eps`` (percolating
        fraction), ``eps_total``, ``residual`` (relative, reached), ``iterations``,
        ``converged``, ``flux_mismatch`` (inlet vs outlet, relative), ``device``,
        ``seconds``.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    # each iteration is a dozen light passes over the volume: below a few million voxels, waking
    # threads costs more than they save (10x slower with 2 threads on a busy 2-core machine)
    if device == "cpu" and mask.size < 4_000_000:
        torch.set_num_threads(1)
    try:
        return _solve(mask, axis, voxel_size, tol, max_iter, device)
    finally:
        torch.set_num_threads(threads)


def _solve(mask, axis, voxel_size, tol, max_iter, device) -> dict:
    import torch

    start = time.perf_counter()
    mask = np.asarray(mask, dtype=bool)
    length = mask.shape[axis]
    result = {"eps_total": float(mask.mean()), "axis": axis, "device": device}
    conducting = percolating(mask, axis) if length > 1 else np.zeros_like(mask)
    eps = float(conducting.mean())
    if eps == 0:
        name = "zyx"[axis]
        if length == 1:
            reason = f"axis {name} is 1 voxel long: too short to solve (no layers between the faces)"
        else:
            reason = (
                f"the phase does not percolate along {name} (no cluster touches both faces): "
                "no transport solve"
            )
        log.debug("%s", reason)
        return result | {
            "skipped": reason,
            "tau": float("inf"),
            "relative_diffusivity": 0.0,
            "eps": 0.0,
            "residual": 0.0,
            "iterations": 0,
            "converged": True,
            "flux_mismatch": 0.0,
            "seconds": time.perf_counter() - start,
        }
    log.info(
        "diffusion solve on %s voxels along axis %d: ~%.0f MiB on %s",
        mask.shape,
        axis,
        solve_memory(mask.shape) / 2**20,
        device,
    )
    size = np.asarray(voxel_size, dtype=float)
    m = torch.as_tensor(conducting, device=device)
    conductance = [float(np.prod(size) / size[d] ** 2) for d in range(3)]  # face area / distance
    edges = []
    for d in range(3):
        n = mask.shape[d]
        edges.append((m.narrow(d, 0, n - 1) & m.narrow(d, 1, n - 1)).to(torch.float64) * conductance[d])

    def laplacian(u):  # sum over neighbours of g * (u_neighbour - u)
        out = torch.zeros_like(u)
        for d in range(3):
            n = u.shape[d]
            if n < 2:
                continue
            diff = edges[d] * (u.narrow(d, 1, n - 1) - u.narrow(d, 0, n - 1))
            out.narrow(d, 0, n - 1).add_(diff)
            out.narrow(d, 1, n - 1).sub_(diff)
        return out

    fixed = torch.zeros_like(m)
    fixed.narrow(axis, 0, 1).copy_(m.narrow(axis, 0, 1))
    fixed.narrow(axis, length - 1, 1).copy_(m.narrow(axis, length - 1, 1))
    free = (m & ~fixed).to(torch.float64)
    boundary = torch.zeros(mask.shape, dtype=torch.float64, device=device)
    boundary.narrow(axis, 0, 1).copy_(m.narrow(axis, 0, 1).to(torch.float64))
    diagonal = torch.zeros_like(boundary)
    for d in range(3):
        n = mask.shape[d]
        diagonal.narrow(d, 0, n - 1).add_(edges[d])
        diagonal.narrow(d, 1, n - 1).add_(edges[d])
    inverse = torch.where(free > 0, 1.0 / diagonal.clamp_min(1e-300), torch.zeros_like(diagonal))

    def apply(u):  # the SPD operator on the free voxels
        return -laplacian(u) * free

    b = laplacian(boundary) * free
    shape = [1, 1, 1]
    shape[axis] = length
    ramp = torch.linspace(1.0, 0.0, length, dtype=torch.float64, device=device).reshape(shape)
    u = ramp * free  # a linear profile: close to the answer in open structures
    r = b - apply(u)
    z = inverse * r
    p = z.clone()
    rz = torch.sum(r * z)
    norm_b = float(torch.linalg.vector_norm(b)) or 1.0
    residual = float(torch.linalg.vector_norm(r)) / norm_b
    iterations = 0
    while residual > tol and iterations < max_iter:
        q = apply(p)
        alpha = rz / torch.sum(p * q)
        u.add_(alpha * p)
        r.sub_(alpha * q)
        iterations += 1
        if iterations % 10 == 0:
            residual = float(torch.linalg.vector_norm(r)) / norm_b
        z = inverse * r
        rz_new = torch.sum(r * z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    residual = float(torch.linalg.vector_norm(b - apply(u))) / norm_b
    concentration = u + boundary
    # flow through the first and last gaps between layers (equal at convergence)
    rates = [
        float(
            torch.sum(
                edges[axis].narrow(axis, k, 1)
                * (concentration.narrow(axis, k, 1) - concentration.narrow(axis, k + 1, 1))
            )
        )
        for k in (0, length - 2)
    ]
    rate = (rates[0] + rates[1]) / 2
    area = float(np.prod([mask.shape[d] * size[d] for d in range(3) if d != axis]))
    relative = rate * (length - 1) * size[axis] / area
    return result | {
        "skipped": None,
        "tau": eps / relative if relative > 0 else float("inf"),
        "relative_diffusivity": relative,
        "eps": eps,
        "residual": residual,
        "iterations": iterations,
        "converged": residual <= tol,
        "flux_mismatch": abs(rates[0] - rates[1]) / max(abs(rates[0]), abs(rates[1]), 1e-300),
        "seconds": time.perf_counter() - start,
    }


def split(n: int, side: int) -> list[slice]:
    """``ceil(n / side)`` consecutive slices of ``range(n)`` of nearly equal lengths (none much shorter)."""
    parts = max(1, -(-n // side))
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def block_tortuosity(
    read: Callable[[tuple[slice, ...]], np.ndarray],
    shape: tuple[int, int, int],
    axis: int,
    block: tuple[int, int, int],
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    tol: float = 1e-8,
    device: str | None = None,
) -> dict:
    """Tortuosity factor along ``axis`` from independent solves on sub-volumes, one in memory at a time.

    Each block is solved as a volume of its own (:func:`tortuosity`: fixed
    concentrations on its first and last layers along ``axis``, no flux through
    its other four sides). The blocks of one column along ``axis`` are resistances
    in series (their interfaces are taken as equipotential), and the columns
    conduct in parallel (no flux crosses their sides): a column's resistance is
    ``sum_k (L_k - 1) h / (D_k A)``, the volume's conductance the sum of its
    columns', and ``D_eff / D_bulk = G sum_k (L_k - 1) h / A_total``. Exact for
    channels straight along the axis; otherwise the sides cut paths that wander
    between columns (D too low: a path that leaves its column is lost) and the
    equipotential interfaces let flow redistribute at every block (D too high);
    ``eps`` counts the voxels that percolate within their own block.

    Parameters
    ----------
    read : callable
        ``read(region)`` gives the conducting mask (bool) of a region of the volume.
    shape : (int, int, int)
        The volume's shape.
    axis : int
        Direction of the concentration gradient.
    block : (int, int, int)
        Largest block sides; each axis is cut into ``ceil(n / side)`` nearly equal parts.
    voxel_size, tol, device
        As :func:`tortuosity`.

    Returns
    -------
    dict
        The keys of :func:`tortuosity` (``residual`` and ``flux_mismatch`` the worst
        block's, ``iterations`` the sum), with ``blocks`` and ``block_shape``.
    """
    start = time.perf_counter()
    cuts = [split(n, b) for n, b in zip(shape, block)]
    size = np.asarray(voxel_size, dtype=float)
    h = size[axis]
    lengths = [s.stop - s.start for s in cuts[axis]]
    links = sum(n - 1 for n in lengths)
    lateral = [cuts[d] for d in range(3) if d != axis]
    conductance, percolating_voxels, solves = 0.0, 0, []
    for first, second in itertools.product(*lateral):
        resistance = 0.0
        for along in cuts[axis]:
            region = [first, second]
            region.insert(axis, along)
            mask = read(tuple(region))
            solve = tortuosity(mask, axis, voxel_size, tol, device=device)
            solves.append(solve)
            percolating_voxels += round(solve["eps"] * mask.size)
            area = float(np.prod([mask.shape[d] * size[d] for d in range(3) if d != axis]))
            flow = solve["relative_diffusivity"] * area / ((mask.shape[axis] - 1) * h)
            resistance += 1.0 / flow if flow > 0 else float("inf")
        conductance += 1.0 / resistance if resistance > 0 else 0.0
    total_area = float(np.prod([shape[d] * size[d] for d in range(3) if d != axis]))
    relative = conductance * links * h / total_area
    eps = percolating_voxels / float(np.prod(shape))
    skipped = None
    if relative <= 0:
        reasons = {s["skipped"] for s in solves if s["skipped"]}
        skipped = reasons.pop() if len(reasons) == 1 else f"no column of blocks conducts along {'zyx'[axis]}"
    return {
        "skipped": skipped,
        "axis": axis,
        "device": solves[0]["device"],
        "tau": eps / relative if relative > 0 else float("inf"),
        "relative_diffusivity": relative,
        "eps": eps,
        "eps_total": float(np.mean([s["eps_total"] for s in solves])),
        "residual": max(s["residual"] for s in solves),
        "iterations": sum(s["iterations"] for s in solves),
        "converged": all(s["converged"] for s in solves),
        "flux_mismatch": max(s["flux_mismatch"] for s in solves),
        "blocks": len(solves),
        "block_shape": [max(s.stop - s.start for s in c) for c in cuts],
        "seconds": time.perf_counter() - start,
    }
