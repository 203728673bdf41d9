"""Every input format opens lazily, read-only, with the right values."""

from __future__ import annotations

import re

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image

import matseg
from matseg import MatsegError, open_volume

DATA = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)


def make_zarr_v2(tmp_path):
    path = tmp_path / "v2.zarr"
    zarr.create_array(str(path), shape=DATA.shape, chunks=(1, 20, 25), dtype=DATA.dtype, zarr_format=2)[:] = (
        DATA
    )
    return str(path)


def make_zarr_v3_in_group(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_group("scans").create_array("raw", shape=DATA.shape, chunks=(1, 20, 25), dtype=DATA.dtype)[
        :
    ] = DATA
    root.create_array("other", shape=(2, 2), dtype="uint8")
    return f"{tmp_path / 'g.zarr'}:/scans/raw"


def make_ome_zarr_5d(tmp_path):
    """An OME-Zarr (NGFF 0.5) image written by ome-zarr-py, with singleton t and c axes."""
    root = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    write_image(DATA[None, None], root, axes="tczyx", scale_factors=(2,))
    return str(tmp_path / "ome.zarr")


def make_hdf5(tmp_path):
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh.create_dataset("entry/data", data=DATA, chunks=(1, 20, 25))
    return f"{tmp_path / 'scan.h5'}:/entry/data"


def make_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", DATA, photometric="minisblack")
    return str(tmp_path / "stack.tif")


@pytest.mark.parametrize(
    "make, kind",
    [
        (make_zarr_v2, "zarr"),
        (make_zarr_v3_in_group, "zarr"),
        (make_ome_zarr_5d, "ome-zarr"),
        (make_hdf5, "hdf5"),
        (make_tiff, "tiff"),
    ],
)
def test_formats_open_lazily(tmp_path, make, kind):
    spec = make(tmp_path)
    volume = open_volume(spec)
    assert isinstance(volume.data, da.Array)
    assert volume.kind == kind
    assert volume.shape == DATA.shape
    np.testing.assert_array_equal(volume.data.compute(), DATA)


def test_sample_store_image_and_truth(small_sample):
    image = open_volume(small_sample)
    truth = open_volume(small_sample, labels=True)
    assert image.kind == truth.kind == "ome-zarr"
    assert image.shape == truth.shape == (16, 64, 64)
    assert truth.phases == ("pore", "carbon-binder", "active")
    assert set(np.unique(truth.data.compute())) <= {0, 1, 2}


def test_group_with_several_arrays_asks_for_a_path(tmp_path):
    make_zarr_v3_in_group(tmp_path)
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="a")
    root.create_array("second", shape=(2, 2), dtype="uint8")
    with pytest.raises(MatsegError, match="name one as"):
        open_volume(tmp_path / "g.zarr")


def test_multichannel_ome_is_refused(tmp_path):
    root = zarr.open_group(str(tmp_path / "mc.zarr"), mode="w")
    write_image(np.zeros((2, 4, 32, 32), np.uint8), root, axes="czyx", scale_factors=())
    with pytest.raises(MatsegError, match="2 entries along its channel axis"):
        open_volume(tmp_path / "mc.zarr")


@pytest.mark.parametrize("target", ["/entry/data", "/entry"])
def test_an_external_link_is_read_through_to_its_dataset(tmp_path, target):
    """A file whose only entry is an external link (to a dataset, or a group holding one) in
    another file: h5py follows it, and so does the listing of what the file holds."""
    with h5py.File(tmp_path / "data.h5", "w") as fh:
        fh.create_dataset("entry/data", data=DATA, chunks=(1, 20, 25))
    with h5py.File(tmp_path / "master.h5", "w") as fh:
        fh["scan"] = h5py.ExternalLink("data.h5", target)
    inner = "/scan" if target == "/entry/data" else "/scan/data"
    for spec in (tmp_path / "master.h5", f"{tmp_path / 'master.h5'}:{inner}"):
        volume = open_volume(spec)
        assert volume.kind == "hdf5" and volume.shape == DATA.shape
        np.testing.assert_array_equal(volume.data.compute(), DATA)


def test_tiff_of_one_series_a_page_is_one_stack(tmp_path):
    """Pages written one at a time are image series of their own: stacked along Z (reading the
    first would drop every other slice silently); series that do not stack are refused."""
    data = np.random.default_rng(0).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in data:
            tif.write(page, contiguous=False)
    volume = open_volume(tmp_path / "pages.tif")
    assert volume.shape == data.shape
    np.testing.assert_array_equal(volume.data.compute(), data)
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(data[0], contiguous=False)
        tif.write(data[1, :20], contiguous=False)
    with pytest.raises(MatsegError, match="do not stack into one volume"):
        open_volume(tmp_path / "mixed.tif")


def make_tiff_folder(tmp_path, data=DATA, name="slices"):
    """One TIFF a slice, numbered without padding (z2 before z10 only in natural order)."""
    folder = tmp_path / name
    folder.mkdir()
    for z, page in enumerate(data):
        tifffile.imwrite(folder / f"z{z}.tif", page, photometric="minisblack")
    return folder


def test_a_folder_of_tiff_slices_is_one_volume_in_natural_order(tmp_path):
    """How microscopes export a stack: a file a slice, read lazily (a chunk a slice) and
    stacked as the names count (z2 before z10), the same volume as one TIFF stack."""
    data = np.random.default_rng(0).integers(0, 4000, (12, 40, 50), dtype=np.uint16)
    folder = make_tiff_folder(tmp_path, data)
    (folder / "notes.txt").write_text("not a slice")
    tifffile.imwrite(folder / "._z3.tif", data[0])  # a macOS resource copy: hidden, not a slice
    volume = open_volume(folder)
    assert volume.kind == "tiff-folder" and isinstance(volume.data, da.Array)
    assert volume.data.chunks[0] == (1,) * 12
    np.testing.assert_array_equal(volume.data.compute(), data)


def test_slices_saved_with_singleton_axes_or_a_thumbnail_are_slices(tmp_path):
    """What other tools write for one slice: a (1, Y, X) image (tifffile's QYX), a (Y, X, 1) one,
    a page with a reduced-resolution thumbnail beside it: each is one 2-D slice."""
    data = np.random.default_rng(1).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    for name, write in {
        "qyx": lambda path, page: tifffile.imwrite(path, page[None]),
        "yxq": lambda path, page: tifffile.imwrite(path, page[..., None], photometric="minisblack"),
        "thumbnail": lambda path, page: _with_thumbnail(path, page),
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        for z, page in enumerate(data):
            write(folder / f"s{z}.tif", page)
        volume = open_volume(folder)
        assert volume.shape == data.shape, name
        np.testing.assert_array_equal(volume.data.compute(), data)


def _with_thumbnail(path, page):
    with tifffile.TiffWriter(path) as tif:
        tif.write(page, photometric="minisblack")
        tif.write(page[::4, ::4], photometric="minisblack", subfiletype=1)


def test_a_folder_of_slices_carries_the_voxel_size_its_first_slice_records(tmp_path):
    """ImageJ's pixel size and slice spacing, as one TIFF stack's are carried."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(
            folder / f"s{z}.tif", DATA[z], imagej=True, resolution=(200, 200),
            metadata={"unit": "um", "spacing": 0.01},
        )  # fmt: skip
    size = open_volume(folder).voxel_size
    assert size.values == pytest.approx((0.01, 0.005, 0.005)) and size.unit == "micrometer"


def test_a_folder_of_slices_is_no_label_image_of_itself(tmp_path):
    """As a TIFF stack: without --truth its own values would be scored as its labels."""
    from matseg.io.read import open_labels

    folder = make_tiff_folder(tmp_path, (DATA % 3).astype(np.uint8))
    with pytest.raises(MatsegError, match="holds no label image of its own"):
        open_labels(folder)
    assert open_labels(folder, folder).shape == DATA.shape  # named as labels: read


def test_natural_order_is_one_order_on_every_file_system(tmp_path):
    """Names whose numbers are equal (z1, z01), other cases, digits of other scripts: one order,
    and no crash on a character that is a digit but no number (²)."""
    from matseg.io.sequence import tiff_files

    names = ["z01.tif", "Z1.tif", "z1.tif", "z10.tif", "z2.tif", "z1\u00b2.tif", "z\u0663.tif"]
    for name in names:
        tifffile.imwrite(tmp_path / name, DATA[0])
    expected = ["Z1.tif", "z01.tif", "z1.tif", "z1\u00b2.tif", "z2.tif", "z\u0663.tif", "z10.tif"]
    assert [f.name for f in tiff_files(tmp_path)] == expected


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:-1000])  # the header first, the pixels after: a copy stopped


@pytest.mark.parametrize(
    "odd, says",
    [
        (
            lambda f: tifffile.imwrite(f / "z9.tif", np.zeros((40, 60), np.uint16)),
            "differ: z9.tif is (40, 60)",
        ),
        (
            lambda f: tifffile.imwrite(f / "z9.tif", np.zeros((40, 50), np.uint8)),
            "differ: z9.tif is (40, 50) uint8",
        ),
        (
            lambda f: tifffile.imwrite(
                f / "z9.tif", np.zeros((3, 40, 50), np.uint16), photometric="minisblack"
            ),
            "z9.tif holds an image of shape (3, 40, 50)",
        ),
        (
            lambda f: tifffile.imwrite(f / "z9.tif", np.zeros((40, 50, 3), np.uint8), photometric="rgb"),
            "z9.tif is a colour image (axes YXS); matseg reads grey levels",
        ),
        (lambda f: (f / "z9.tif").write_bytes(b"not a tiff"), "cannot read TIFF"),
        (lambda f: _cut_short(f / "z1.tif"), "z1.tif is truncated: its image data ends at byte 4,"),
        (
            lambda f: tifffile.imwrite(f / "z9.tif", np.zeros((4, 40, 50), np.uint16)),
            "z9.tif holds 4 planes (axes SYX, tagged as colour samples): a stack of 4 slices, or",
        ),
    ],
    ids=["shape", "dtype", "stack", "colour", "broken", "truncated", "planar"],
)
def test_a_folder_of_slices_that_do_not_stack_is_refused_before_any_read(tmp_path, odd, says):
    folder = make_tiff_folder(tmp_path)
    (folder / "z2.tif").unlink()
    odd(folder)
    with pytest.raises(MatsegError, match=re.escape(says)):
        open_volume(folder)


def test_a_slice_that_cannot_be_decoded_is_named_by_its_file(tmp_path):
    """Its header whole and its compressed pixels garbled: found when the slice is read (the
    check before the run reads headers only), and named by the file, not by the folder."""
    data = np.random.default_rng(1).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, page in enumerate(data):
        tifffile.imwrite(folder / f"z{z}.tif", page, compression="zlib")
    with tifffile.TiffFile(folder / "z4.tif") as tif:
        start, length = tif.pages.first.dataoffsets[0], tif.pages.first.databytecounts[0]
    raw = bytearray((folder / "z4.tif").read_bytes())
    raw[start + 2 : start + length - 2] = bytes(length - 4)
    (folder / "z4.tif").write_bytes(bytes(raw))
    volume = open_volume(folder)
    assert np.array_equal(volume.data[:4].compute(), data[:4])
    with pytest.raises(MatsegError, match=r"cannot read slice .*z4\.tif: error: Error -3"):
        volume.data[3:5].compute()


def test_a_folder_without_tiffs_is_still_read_as_zarr(tmp_path):
    """No TIFF in it and no Zarr metadata: the Zarr reader's message, as before."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(MatsegError, match="no Zarr array or group at"):
        open_volume(tmp_path / "empty")


@pytest.mark.parametrize(
    "kwargs, channels",
    [({"photometric": "rgb"}, 3), ({"photometric": "rgb", "extrasamples": ["unassalpha"]}, 4)],
    ids=["rgb", "rgba"],
)
def test_a_colour_tiff_is_refused_not_read_as_a_stack(tmp_path, kwargs, channels):
    """Its interleaved samples (YXS) would otherwise be read as an X axis of 3 or 4."""
    grey = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", np.stack([grey] * channels, -1), **kwargs)
    with pytest.raises(MatsegError, match="is a colour image .* convert it to greyscale"):
        open_volume(tmp_path / "colour.tif")


@pytest.mark.parametrize("slices", [3, 4])
def test_a_stack_tifffile_saved_as_planar_samples_is_read_as_slices(tmp_path, slices, caplog):
    """tifffile saves a (3 or 4, Y, X) array as planar RGB(A) by default: still the slices."""
    data = np.random.default_rng(0).normal(100, 20, (slices, 40, 50)).astype(np.float32)
    tifffile.imwrite(tmp_path / "stack.tif", data)
    volume = open_volume(tmp_path / "stack.tif")
    np.testing.assert_array_equal(volume.data.compute(), data)
    assert "stores its slices as colour samples" in caplog.text


def test_links_inside_a_linked_group_are_followed(tmp_path):
    """A master file links a group kept in another file, which itself links the data kept in a
    third (a common beamline layout); a link back to the master does not loop."""
    with h5py.File(tmp_path / "raw.h5", "w") as fh:
        fh.create_dataset("data", data=DATA, chunks=(1, 20, 25))
    with h5py.File(tmp_path / "entry.h5", "w") as fh:
        fh["entry/instrument/detector"] = h5py.ExternalLink("raw.h5", "/data")
        fh["entry/master"] = h5py.ExternalLink("master.h5", "/")
    with h5py.File(tmp_path / "master.h5", "w") as fh:
        fh["scan"] = h5py.ExternalLink("entry.h5", "/entry")
    volume = open_volume(tmp_path / "master.h5")
    assert volume.kind == "hdf5" and volume.shape == DATA.shape
    np.testing.assert_array_equal(volume.data.compute(), DATA)
    volume = open_volume(f"{tmp_path / 'master.h5'}:/scan/instrument/detector")
    assert volume.shape == DATA.shape


def test_a_link_back_into_a_file_already_walked_lists_its_datasets_once(tmp_path, monkeypatch):
    """The opened file holds the data; a file it links to links back (to its root, or to a group
    of it): one dataset, however the opened file was named."""
    with h5py.File(tmp_path / "m.h5", "w") as fh:
        fh.create_dataset("entry/data/raw", data=DATA, chunks=(1, 20, 25))
        fh["scan"] = h5py.ExternalLink("e.h5", "/entry")
    with h5py.File(tmp_path / "e.h5", "w") as fh:
        fh["entry/root"] = h5py.ExternalLink("m.h5", "/")
        fh["entry/data"] = h5py.ExternalLink("m.h5", "/entry/data")
    monkeypatch.chdir(tmp_path)
    for spec in ("m.h5", tmp_path / "m.h5"):
        volume = open_volume(spec)
        assert volume.shape == DATA.shape


@pytest.mark.parametrize(("dtype", "offset"), [(np.uint32, 2**30), (np.int64, 10**12), (np.float64, 1e8)])
def test_grey_levels_far_from_zero_keep_apart(dtype, offset):
    """A detector's offset (2**30 + x) in float32 keeps steps of 128: the offset goes first."""
    from matseg.normalize import Normalization

    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    raw = levels.astype(dtype) + dtype(offset)
    near = Normalization(0.0, 255.0)(levels)
    far = Normalization(float(offset), float(offset) + 255.0)(raw)
    assert far.dtype == np.float32 and np.unique(far).size == 256
    np.testing.assert_allclose(far, near, atol=1e-6)


def test_two_grey_levels_are_split_in_the_middle(tmp_path):
    """Otsu keeps the first of the equally good thresholds of a two-level image, one bin above
    the dark level: the classical candidate's smoothing then grew the bright phase (0.64 for
    0.44). The threshold goes to the middle of the empty gap; continuous images keep theirs."""
    import scipy.ndimage as ndi

    from matseg.normalize import multiotsu_thresholds

    rng = np.random.default_rng(3)
    field = ndi.gaussian_filter(rng.normal(size=(128, 128)), 4.0)
    bright = field > np.quantile(field, 0.56)  # blobs, 44 % of the image
    levels = np.where(bright, 1.0, 0.0).astype(np.float32)
    assert multiotsu_thresholds(levels, 2) == pytest.approx((0.5,))
    smooth = rng.normal(0.5, 0.15, 100_000).astype(np.float32)
    (threshold,) = multiotsu_thresholds(smooth, 2)
    assert abs(threshold - 0.5) < 0.02
    image = tmp_path / "two.zarr"
    zarr.create_array(str(image), data=np.where(bright, 200, 50).astype(np.uint8)[None].repeat(4, 0))
    report = matseg.segment(image, tmp_path / "o.zarr", model="classical", phases=("dark", "bright"))
    assert report["volume_fractions"]["bright"] == pytest.approx(bright.mean(), abs=0.02)
