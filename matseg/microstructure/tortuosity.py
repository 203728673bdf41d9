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
The solve holds the whole volume (or the sub-volume given) in memory: about
``BYTES_PER_VOXEL`` bytes per voxel, reported before it starts.
"""

from __future__ import annotations

import logging
import time

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
        return result | {
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
        "tau": eps / relative if relative > 0 else float("inf"),
        "relative_diffusivity": relative,
        "eps": eps,
        "residual": residual,
        "iterations": iterations,
        "converged": residual <= tol,
        "flux_mismatch": abs(rates[0] - rates[1]) / max(abs(rates[0]), abs(rates[1]), 1e-300),
        "seconds": time.perf_counter() - start,
    }
