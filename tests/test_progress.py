"""Progress records and the write-behind: a tile's row is written after its outputs, and
every write handed to the writer is done (or its error raised) by the time a stage ends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from matseg.io.progress import TileRecords, WriteBehind

FIELDS = {"gflops": 1, "counts": 3}


def _store(tmp_path):
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="w")
    labels = root.create_array("labels", shape=(4, 8, 8), chunks=(1, 8, 8), dtype="uint8")
    return root, labels, TileRecords.create(root, "cheap", 4, FIELDS)


@pytest.mark.parametrize("behind", [False, True])
def test_a_tile_is_recorded_with_its_outputs(tmp_path, behind):
    root, labels, records = _store(tmp_path)
    with WriteBehind(2) as writes:
        records = TileRecords.open(root, "cheap", writes if behind else None)
        for t in (2, 0):
            out = [(labels, (slice(t, t + 1), slice(None), slice(None)), np.full((1, 8, 8), t + 1, np.uint8))]
            records.write(t, out, gflops=10.0 * t, counts=[t, 1, 2])
        records.flush()
        rows = records.read()
    assert records.done(rows).tolist() == [True, False, True, False]
    assert rows["gflops"][[0, 2], 0].tolist() == [0.0, 20.0]
    assert rows["counts"][2].tolist() == [2, 1, 2]
    assert np.isnan(rows["counts"][1]).all()
    assert (labels[0] == 1).all() and (labels[2] == 3).all() and (labels[1] == 0).all()


def test_flush_waits_for_every_write_in_the_order_given():
    done = []

    def slow(i):
        time.sleep(0.02 if i % 2 else 0.0)
        done.append(i)

    with WriteBehind(3) as writes:
        for i in range(8):
            writes.submit(slow, i)
        writes.flush()
        assert done == list(range(8))


def test_a_worker_waits_for_room_past_the_bound():
    release, started = threading.Event(), []
    with WriteBehind(1) as writes:
        writes.submit(release.wait)  # the only room, held until released
        second = threading.Thread(target=lambda: (writes.submit(started.append, 1), started.append(2)))
        second.start()
        time.sleep(0.2)
        waiting = list(started)  # the first write still holds its tile: no room yet
        release.set()
        second.join(5)
        writes.flush()
    assert waiting == []
    assert sorted(started) == [1, 2]


def test_a_failed_write_is_raised_by_the_next_submit_and_by_flush():
    def fail():
        raise OSError("No space left on device")

    with WriteBehind(2) as writes:
        writes.submit(fail)
        with pytest.raises(OSError, match="No space left"):
            writes.flush()
        with pytest.raises(OSError, match="No space left"):
            writes.submit(print, "never")
