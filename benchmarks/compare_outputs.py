"""Two folders of matseg outputs (the same commands run by two versions of the code):
every array bit for bit and every report number, timings aside.

    python benchmarks/compare_outputs.py OLD_DIR NEW_DIR

Each folder holds NAME.zarr outputs and, optionally, NAME.txt with what the command
printed. Exit code 0 when everything matches; the differences are listed otherwise.
"""

import json
import sys
from pathlib import Path

import numpy as np
import zarr

old, new = Path(sys.argv[1]), Path(sys.argv[2])
SKIP = {
    "timings",
    "run",
    "versions",
    "output",
    "command",
    "seconds",
    "sampled_seconds_per_gflop",
    "peak_rss_mb",
}


def arrays(group, prefix=""):
    for name, a in group.arrays():
        yield prefix + name, a
    for name, g in group.groups():
        yield from arrays(g, prefix + name + "/")


def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in SKIP}
    if isinstance(d, list):
        return [strip(v) for v in d]
    if isinstance(d, str):
        return d.replace(str(old), "X").replace(str(new), "X")
    return d


bad = 0
for store in sorted(old.glob("*.zarr")):
    other = new / store.name
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(other), mode="r")
    names_a = dict(arrays(a))
    names_b = dict(arrays(b))
    n_same = 0
    if set(names_a) != set(names_b):
        print(store.name, "array sets differ", set(names_a) ^ set(names_b))
        bad += 1
    for name in sorted(set(names_a) & set(names_b)):
        x, y = names_a[name][...], names_b[name][...]
        same = (
            x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        )
        if name.startswith("progress/"):  # per-tile records: timings (seconds) differ by nature
            fields = names_a[name].attrs["fields"]
            cols, start = [], 0
            for f, w in fields:
                if f != "seconds":
                    cols += list(range(start, start + w))
                start += w
            same = np.array_equal(x[:, cols], y[:, cols], equal_nan=True)
        if name == "selector/seconds":  # each tile's cheap-pass time: a timing
            same = x.shape == y.shape
        n_same += same
        if not same:
            print(store.name, name, "DIFFERS")
            bad += 1
    ra, rb = strip(dict(a.attrs)), strip(dict(b.attrs))
    if ra != rb:
        print(store.name, "attrs differ")
        bad += 1
        for k in set(ra.get("matseg", {})) | set(rb.get("matseg", {})):
            if ra.get("matseg", {}).get(k) != rb.get("matseg", {}).get(k):
                print(
                    "   ",
                    k,
                    str(ra.get("matseg", {}).get(k))[:200],
                    "|",
                    str(rb.get("matseg", {}).get(k))[:200],
                )
    rep_a, rep_b = store / "matseg-report.json", other / "matseg-report.json"
    if rep_a.exists() != rep_b.exists():
        print(store.name, "report presence differs")
        bad += 1
    elif rep_a.exists():
        ja, jb = strip(json.loads(rep_a.read_text())), strip(json.loads(rep_b.read_text()))
        if ja != jb:
            print(store.name, "report differs", [k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)])
            bad += 1
    kept = "same" if rep_a.exists() else "none"
    print(f"{store.name}: {n_same}/{len(names_a)} arrays identical; report {kept}")
for t in sorted(old.glob("*.txt")):
    if t.name == "rc.txt":
        continue
    la = [
        line
        for line in t.read_text().replace(str(old), "X").splitlines()
        if not line.strip().startswith(("time", "memory"))
    ]
    lb = [
        line
        for line in (new / t.name).read_text().replace(str(new), "X").splitlines()
        if not line.strip().startswith(("time", "memory"))
    ]
    if la != lb:
        print(t.name, "printed summary differs:", set(la) ^ set(lb))
        bad += 1
print("DIFFERENCES:", bad)
sys.exit(1 if bad else 0)
