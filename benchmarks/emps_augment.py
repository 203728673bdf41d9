"""Does augmentation help on real images? Train on some EMPS images, test on the others.

    python benchmarks/emps_augment.py [--model cheap] [--steps 300] [--out FILE.json]
    python benchmarks/emps_augment.py --data ../shared/data/emps --augment none light data/augment-emps.yaml

`data/emps/` holds eight separate 512 x 512 SEM/TEM images with particle/background labels.
Two folds: train on the even-numbered images and test on the odd ones, then the other way
round. Each fold trains the same net with the same seed and steps, once per `--augment`
(default `none` and `strong`), and prints the held-out mIoU of each. With `--data` pointing
at the full 48-image set (`../shared/data/emps`), the split is `benchmarks/emps_selector.py`'s:
train on images 0-23, test on 36-47.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from matseg.augment import load_augmentation
from matseg.labelled import load_labelled
from matseg.models.segmenter import new_segmenter
from matseg.training import fit, score

EMPS = Path(__file__).resolve().parents[1] / "data" / "emps"
PHASES = ("background", "particle")
FOLDS = ((0, 2, 4, 6), (1, 3, 5, 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cheap", choices=("cheap", "medium", "expensive"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", nargs="+", default=["none", "strong"])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--folds", type=int, choices=(1, 2), default=2, help="run only the first fold with 1")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--data", type=Path, default=EMPS, help="folder of image.tif and labels.tif")
    args = parser.parse_args()
    image, labels = args.data / "image.tif", args.data / "labels.tif"
    n_images = len(tifffile.TiffFile(image).pages)
    folds = FOLDS[: args.folds] if n_images == 8 else (tuple(range(24)),)
    results = {a: [] for a in args.augment}
    for train_slices in folds:
        test_slices = [i for i in range(8) if i not in train_slices] if n_images == 8 else list(range(36, 48))
        train_data, _ = load_labelled(image, labels, train_slices)
        test_data, _ = load_labelled(image, labels, test_slices)
        for name in args.augment:
            model = new_segmenter(args.model, PHASES, args.seed)
            fit(
                model,
                [train_data],
                args.steps,
                batch=8,
                patch=args.patch,
                seed=args.seed,
                augment=load_augmentation(name),
            )
            per_image = [
                score(
                    model, [type(test_data)(test_data.images[k : k + 1], test_data.labels[k : k + 1], "emps")]
                )["miou"]
                for k in range(len(test_slices))
            ]
            results[name].append({"train": list(train_slices), "test": test_slices, "miou": per_image})
            print(
                f"train {len(train_slices)} images, test {test_slices} augment {name}: "
                f"mIoU {np.mean(per_image):.4f}"
            )
    print(f"{args.model}, {args.steps} steps, seed {args.seed}: mean held-out mIoU")
    for name, folds in results.items():
        print(f"  --augment {name:8} {np.mean([m for f in folds for m in f['miou']]):.4f}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "steps": args.steps,
                    "patch": args.patch,
                    "seed": args.seed,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
