"""Memory of the task graphs a run makes, against the number of tiles (no model runs).

For lazily defined volumes of 10,000 to 80,000 tiles (zeros: nothing is read), the
peak RSS added by (a) making the cheap pass's tasks as `matseg segment` makes them,
group of whole layers by group, and (b) the intensity pass (a dask reduction, slab by
slab). Both should stay flat as the volume grows; made all at once they grew by some
6.7 kB a tile and 13 kB a chunk. Each size runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import importlib, json, resource, sys, time
import dask.array as da, numpy as np
from matseg.tiling import GROUP_TILES, layer_groups, plan_tiles, tile_blocks
from matseg.normalize import intensity_range
from matseg.pipeline.tasks import tile_tasks
what, layers = sys.argv[1], int(sys.argv[2])
shape = (8 * layers, 256 * 25, 256 * 40)  # 1,000 tiles a layer
data = da.zeros(shape, dtype=np.uint8, chunks=(16, 256, 256))
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
grid = plan_tiles(shape, (8, 256, 256), 32, 16)
todo = list(enumerate(grid.indices()))
before, started = rss(), time.perf_counter()
if what == "tasks":
    for group in layer_groups(todo, GROUP_TILES):
        blocks = tile_blocks(data, grid, range(group[0][1][0], group[-1][1][0] + 1))
        tile_tasks(lambda *a: None, "cheap", blocks, group, grid, 1, 2, 3, 4)
else:
    class Volume: data, source = data, "zeros"
    intensity_range(Volume, 3)
print(json.dumps({"tiles": grid.n_tiles, "chunks": data.npartitions, "added_mb": rss() - before,
                  "seconds": time.perf_counter() - started}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 40, 80])
    args = parser.parse_args()
    for what in ("tasks", "intensity"):
        rows = []
        for layers in args.layers:
            command = [sys.executable, "-c", CHILD, what, str(layers)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        first = rows[0]["added_mb"]
        for row in rows:
            print(
                f"{what}: {row['tiles']:,} tiles ({row['chunks']:,} chunks): +{row['added_mb']:.0f} MB "
                f"({row['added_mb'] / first:.2f}x the smallest) in {row['seconds']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
