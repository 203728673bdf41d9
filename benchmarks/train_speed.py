"""How much does imaging augmentation slow `matseg train`? Steps with and without, side by side.

    python benchmarks/train_speed.py [--models cheap medium expensive] [--steps 12] [--repeats 3]
                                     [--augment none light data/augment-finetune.yaml strong]
                                     [--out FILE.json]

For each net, the same short training (`matseg.training.fit`, batch 8 of 128², the bundled
weights' settings) runs once per `--augment`, in turn, `--repeats` times over (after one
discarded warm-up run per net), on the eight labelled micrographs in `data/emps/`: the data
changes nothing in a step's cost but the patches drawn, and those are the same for every
augmentation (its random stream is separate). Prints each setting's median seconds per step
and its ratio to `none` measured in the same run, and the seconds that re-imaging one batch
takes alone (`matseg.augment.augment_batch`). Ratios, not absolute times, are the result: the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from matseg.augment import augment_batch, load_augmentation
from matseg.labelled import draw_batch, load_labelled
from matseg.models.segmenter import new_segmenter
from matseg.training import fit

EMPS = Path(__file__).resolve().parents[1] / "data" / "emps"
PHASES = ("background", "particle")


def seconds_per_step(name: str, data, augment, steps: int, seed: int) -> float:
    """Wall-clock seconds per step of a fresh ``name`` net trained ``steps`` steps."""
    model = new_segmenter(name, PHASES, seed)
    started = time.perf_counter()
    fit(model, [data], steps, batch=8, patch=128, seed=seed, augment=augment)
    return (time.perf_counter() - started) / steps


def seconds_per_batch(data, augment, batches: int, seed: int) -> float:
    """Seconds to re-image one batch of 8 patches of 128² alone (median over ``batches``)."""
    rng, augment_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    times = []
    for _ in range(batches):
        x, y = draw_batch([data], rng, 8, 128)
        started = time.perf_counter()
        augment_batch(x[:, 0].numpy(), y.numpy(), augment_rng, augment)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cheap", "medium", "expensive"])
    parser.add_argument(
        "--augment", nargs="+", default=["none", "light", "data/augment-finetune.yaml", "strong"]
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.augment[0] != "none":
        parser.error("the first --augment must be 'none', the baseline of the ratios")
    data, _ = load_labelled(EMPS / "image.tif", EMPS / "labels.tif", range(8))
    augments = {name: load_augmentation(name) for name in args.augment}
    results = {"steps": args.steps, "repeats": args.repeats, "models": {}, "batch_seconds": {}}
    for name, augment in augments.items():
        if augment is not None:
            results["batch_seconds"][name] = seconds_per_batch(data, augment, 50, args.seed)
    for model in args.models:
        seconds_per_step(model, data, None, 2, args.seed)  # warm-up: allocations, kernels
        times = {name: [] for name in augments}
        for _ in range(args.repeats):
            for name, augment in augments.items():
                times[name].append(seconds_per_step(model, data, augment, args.steps, args.seed))
        base = float(np.median(times["none"]))
        results["models"][model] = {
            name: {"seconds_per_step": float(np.median(t)), "ratio": float(np.median(t)) / base, "runs": t}
            for name, t in times.items()
        }
    print(f"{'model':<10} {'augment':<30} {'s/step':>8} {'x none':>7}")
    for model, rows in results["models"].items():
        for name, row in rows.items():
            print(f"{model:<10} {name:<30} {row['seconds_per_step']:8.3f} {row['ratio']:7.2f}")
    for name, s in results["batch_seconds"].items():
        print(f"re-imaging one batch alone, {name}: {s * 1000:.1f} ms")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
