"""The selector against every baseline and against MONAI, side by side in one run.

    python benchmarks/selector.py [--out docs/benchmarks.json] [--shape 64 512 512]

Generates held-out test volumes (seeds 301 and 302, imaging profile 'test'),
runs ``matseg.evaluate`` (λ sweep, all-cheap, all-expensive, random and cascade
at equal GFLOPs, oracle; real runs at the default λ and all-expensive), then
MONAI's ``sliding_window_inference`` with the bundled expensive net on the same
volumes, and draws the Pareto plot and a decision map of the first volume.
Needs the ``bench`` extra (monai): ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dask.array as da
import numpy as np
import torch

from matseg.evaluate import evaluate, pareto_plot
from matseg.io.read import open_volume
from matseg.malloc import tune_malloc
from matseg.metrics import confusion_matrix, summarize
from matseg.models.store import load_segmenter
from matseg.normalize import intensity_range
from matseg.pipeline.run import segment
from matseg.sample import write_sample
from matseg.synth import SampleConfig

TEST_SEEDS = (301, 302)
MAP_LAMBDA = 0.02


def monai_run(path: Path, roi: int = 256, overlap: float = 0.25) -> tuple[np.ndarray, float]:
    """MONAI sliding-window inference of the expensive net over every slice; returns labels and seconds."""
    from monai.inferers import sliding_window_inference

    model = load_segmenter("expensive")
    started = time.perf_counter()
    volume = open_volume(path)
    norm = intensity_range(volume)
    x = torch.from_numpy(norm(volume.data.compute()))[:, None]  # slices as the batch
    with torch.inference_mode():
        logits = sliding_window_inference(
            x, (roi, roi), sw_batch_size=4, predictor=model.net, overlap=overlap, mode="gaussian"
        )
    labels = logits.argmax(dim=1).numpy().astype(np.uint8)
    return labels, time.perf_counter() - started


def decision_map_picture(volume: Path, output: Path, picture: Path) -> None:
    """Image, phases and the per-tile decision map of one slice, side by side: the slice
    whose tiles ran the most different candidates (the middle one among equals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import zarr
    from matplotlib.colors import ListedColormap

    root = zarr.open_group(str(output), mode="r")
    levels = root["labels/decisions/0"][:]  # a byte per voxel: one read, not one per slice
    middle = len(levels) // 2
    z = max(range(len(levels)), key=lambda k: (len(np.unique(levels[k])), -abs(k - middle)))
    source = zarr.open_group(str(volume), mode="r")
    image, difficulty = source["0"][z], source["difficulty"][z]
    phases, decisions = root["labels/phases/0"][z], levels[z]
    names = root["labels/decisions"].attrs["matseg"]["candidates"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), dpi=110)
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(difficulty > 0.5, levels=[0.5], colors="orange", linewidths=1)
    axes[0].set_title(f"test volume, slice {z} (orange: hard regions)")
    axes[1].imshow(phases, cmap=ListedColormap(["#202020", "#3fa7d6", "#f2c14e"]), vmin=0, vmax=2)
    axes[1].set_title("phases (pore, carbon-binder, active)")
    palette = {
        "cheap": "#d9d9d9",
        "medium": "#1f77b4",
        "expensive": "#d62728",
        "expensive-2x": "#9467bd",
        "classical": "#2ca02c",
    }
    colours = [palette.get(n, "#8c564b") for n in names]
    axes[2].imshow(decisions, cmap=ListedColormap(colours), vmin=0, vmax=len(names) - 1)
    axes[2].contour(difficulty > 0.5, levels=[0.5], colors="orange", linewidths=1)
    axes[2].set_title("decision map (which candidate ran on each tile)")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=n) for n, c in zip(names, colours)]
    axes[2].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(picture, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    tune_malloc()  # malloc as the matseg command sets it, for matseg and MONAI alike
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.json"))
    parser.add_argument("--work", type=Path, default=Path("work-out/bench"))
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512))
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    volumes = []
    for seed in TEST_SEEDS:
        path = args.work / f"test-{seed}.zarr"
        write_sample(path, tuple(args.shape), seed, SampleConfig(profile="test"), overwrite=True)
        volumes.append(str(path))
    result = evaluate(volumes, args.work / "evaluation", overwrite=True)

    total_cm, monai_seconds = None, 0.0
    for path in volumes:
        labels, seconds = monai_run(Path(path))
        truth = open_volume(path, labels=True).data
        cm = confusion_matrix(da.from_array(labels, chunks=truth.chunks), truth, 3)
        total_cm = cm if total_cm is None else total_cm + cm
        monai_seconds += seconds
    monai = summarize(total_cm, result["phases"]) | {"seconds": monai_seconds}
    result["monai"] = monai
    auto = result["real"]["auto"]
    result["speedup_vs_monai"] = monai_seconds / auto["seconds"]
    print(
        f"MONAI sliding window (expensive net, roi 256, overlap 0.25, gaussian): mIoU {monai['miou']:.4f}, "
        f"{monai_seconds:.1f} s; matseg default lambda: mIoU {auto['miou']:.4f}, {auto['seconds']:.1f} s "
        f"-> {result['speedup_vs_monai']:.2f}x faster"
    )
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    args.images.mkdir(parents=True, exist_ok=True)
    pareto_plot(result, args.images / "pareto.png")
    # the decision map at a λ where the choice varies from tile to tile
    mixed = args.work / f"lambda-{MAP_LAMBDA}.zarr"
    segment(volumes[0], mixed, lam=MAP_LAMBDA, overwrite=True)
    decision_map_picture(Path(volumes[0]), mixed, args.images / "decision-map.png")


if __name__ == "__main__":
    main()
