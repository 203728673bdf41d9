"""Imaging augmentation of `matseg train` and the generator's `wide` profile."""

from __future__ import annotations

import numpy as np
import pytest

from matseg import MatsegError
from matseg.augment import STRONG, Augmentation, augment_batch, augment_patch, load_augmentation, rescale
from matseg.labelled import LabelledSlices
from matseg.models.segmenter import new_segmenter
from matseg.synth import SampleConfig, imaging_parameters, render_region
from matseg.training import fit

from .conftest import run

NEUTRAL = dict(
    each=1.0,
    scale=(1, 1),
    resolution=(1, 1),
    blur=(0, 0),
    shine=(0, 0),
    gamma=(1, 1),
    shading=(0, 0),
    curtain=(0, 0),
    noise=(0, 0),
    noise_variation=(0, 0),
    shot_noise=(0, 0),
    contrast=(1, 1),
    offset=(0, 0),
)


def only(**ranges) -> Augmentation:
    """Every effect at its identity except those given."""
    return Augmentation(**{**NEUTRAL, **ranges})


def blobs(seed=0, shape=(96, 96)) -> np.ndarray:
    """Piecewise-constant 3-phase labels: smooth noise cut into three levels."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 4)
    return np.digitize(field, np.quantile(field, [0.35, 0.65])).astype(np.int64)


def test_neutral_augmentation_changes_nothing():
    labels = blobs()
    image = labels.astype(np.float32) / 2
    x, y = augment_patch(image, labels, np.random.default_rng(0), only())
    np.testing.assert_allclose(x, image, atol=1e-6)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("factor", [0.8, 1.0, 1.25])
def test_pixel_size_change_keeps_labels_aligned_with_image(factor):
    labels = blobs(1)
    image = labels.astype(np.float32)  # the image is the labels: aligned means equal
    x, y = rescale(image, labels, factor)
    assert x.shape == image.shape and y.dtype == labels.dtype
    labelled = y != 255
    assert labelled.mean() > (0.6 if factor < 1 else 0.99)
    # linear interpolation blends only across phase edges
    assert np.mean(np.rint(x[labelled]) == y[labelled]) > 0.97
    if factor == 1.0:
        np.testing.assert_array_equal(y, labels)
    else:
        assert not np.array_equal(y, labels)


def test_augmented_batches_keep_labels_aligned():
    labels = np.stack([blobs(s) for s in range(6)])
    images = labels.astype(np.float32)
    config = only(scale=(0.8, 1.25), probability=1.0)
    x, y = augment_batch(images, labels, np.random.default_rng(3), config)
    labelled = y != 255
    assert np.mean(np.rint(x[labelled]) == y[labelled]) > 0.97
    assert not np.array_equal(y, labels)


def test_each_effect_stays_within_its_range():
    rng = np.random.default_rng(0)
    flat = np.ones((64, 64), np.float32)
    labels = np.zeros((64, 64), np.int64)
    shaded = [augment_patch(flat, labels, rng, only(shading=(0.35, 0.35)))[0] for _ in range(20)]
    deviation = max(np.abs(s - 1).max() for s in shaded)
    assert 0.2 < deviation <= 0.35 + 1e-5
    zero = np.zeros((128, 128), np.float32)
    noisy = augment_patch(zero, labels, rng, only(noise=(0.2, 0.2)))[0]
    assert 0.18 < noisy.std() < 0.22
    varied = augment_patch(zero, labels, rng, only(noise=(0.2, 0.2), noise_variation=(0.6, 0.6)))[0]
    assert 0.2 * 0.4 * 0.9 < varied.std() < 0.2
    striped = augment_patch(zero, labels, rng, only(curtain=(0.1, 0.1)))[0]
    assert np.abs(striped).max() <= 0.1 * 6 and striped.std() > 0.01
    assert np.allclose(augment_patch(flat * 0.25, labels, rng, only(gamma=(2, 2)))[0], 0.0625)
    assert np.allclose(augment_patch(flat, labels, rng, only(offset=(0.1, 0.1)))[0], 1.1)
    impulse = np.zeros((65, 65), np.float32)
    impulse[32, 32] = 1
    blurred = augment_patch(impulse, labels, rng, only(blur=(2.0, 2.0)))[0]
    spread = (blurred * (np.arange(65) - 32.0)[:, None] ** 2).sum() / blurred.sum()
    assert 3.5 < spread <= 4.0 + 1e-3  # variance sigma**2 along each axis


def test_same_seed_same_batch():
    labels = np.stack([blobs(s) for s in range(4)])
    images = labels.astype(np.float32) / 2
    a = augment_batch(images, labels, np.random.default_rng(5), STRONG)
    b = augment_batch(images, labels, np.random.default_rng(5), STRONG)
    c = augment_batch(images, labels, np.random.default_rng(6), STRONG)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    clean = augment_batch(images, labels, np.random.default_rng(5), STRONG, progress=1.0)
    assert not np.array_equal(a[0], clean[0])
    late = Augmentation(clean_final=0.25)
    np.testing.assert_array_equal(
        augment_batch(images, labels, np.random.default_rng(5), late, 0.8)[0], images
    )


def _losses(augment, seed=0):
    labels = np.stack([blobs(s, (64, 64)) for s in range(4)]).astype(np.uint8)
    data = [LabelledSlices(labels.astype(np.float32) / 2, labels, "blobs")]
    model = new_segmenter("cheap", ("a", "b", "c"), seed=1)
    return fit(model, data, steps=4, batch=2, patch=32, seed=seed, augment=augment)


def test_training_stream_without_augmentation_is_unchanged_by_it():
    none = _losses(None)
    assert _losses(None) == none
    # augmentation draws from its own stream: with nothing re-imaged the patches are the same
    assert _losses(Augmentation(probability=0.0)) == none
    assert _losses(STRONG) != none
    assert _losses(STRONG) == _losses(STRONG)


def test_presets_and_yaml(tmp_path):
    assert load_augmentation("none") is None
    assert load_augmentation("strong") == STRONG
    assert load_augmentation("light").noise[1] < STRONG.noise[1]
    path = tmp_path / "aug.yaml"
    path.write_text("probability: 0.5\nblur: [0, 1]\n")
    loaded = load_augmentation(path)
    assert loaded.probability == 0.5 and loaded.blur == (0.0, 1.0) and loaded.noise == STRONG.noise
    path.write_text("blurr: [0, 1]\n")
    with pytest.raises(MatsegError, match="blurr"):
        load_augmentation(path)
    path.write_text("- probability: 0.5\n")
    with pytest.raises(MatsegError, match="must be a mapping of settings"):
        load_augmentation(path)
    for bad in (dict(shading=(0, 1.2)), dict(probability=1.5), dict(gamma=(0, 1)), dict(blur=(2, 1))):
        with pytest.raises(MatsegError):
            Augmentation(**bad)


def test_train_refuses_an_unknown_augmentation(tmp_path, capsys):
    code = run(["train", tmp_path / "x.zarr", "-o", tmp_path / "w", "--augment", "heavy"])
    assert code == 2
    err = capsys.readouterr().err
    assert "heavy" in err and "strong" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_wide_profile_ranges_cover_the_issue():
    wide = [imaging_parameters(s, SampleConfig(profile="wide")) for s in range(60)]
    default = imaging_parameters(0)
    default_range = np.mean([p["active_level"] - p["pore_level"] for p in map(imaging_parameters, range(60))])
    grey = np.array([p["active_level"] - p["pore_level"] for p in wide])
    assert grey.min() < 0.6 * default_range and grey.min() > 0.45 * (205 - 25) / 2
    assert max(p["hard_blur_sigma"] for p in wide) > 1.8 and max(p["hard_blur_sigma"] for p in wide) <= 2.0
    assert 3.5 < max(p["blur_z_sigma"] for p in wide) <= 4.0
    noise = np.array([p["hard_noise_std"] for p in wide]) / grey
    assert 0.25 < noise.max() <= 0.3 + 1e-9
    assert max(p["noise_variation"] for p in wide) > 0.4
    assert 0.3 < max(p["shading_amplitude"] for p in wide) <= 0.35
    curtain = np.array([p["hard_curtain_amplitude"] for p in wide]) / grey
    assert 0.18 < curtain.max() <= 0.2 + 1e-9
    assert max(p["hard_shine_gain"] for p in wide) > 0.7
    # the other profiles keep their parameters: no contrast change, no blur along Z
    assert default["contrast"] == 1.0 and default["blur_z_sigma"] == 0.0 and default["noise_variation"] == 0


def test_wide_volume_renders_the_same_alone_as_cropped():
    shape = (20, 64, 64)
    config = SampleConfig(profile="wide")
    seed = next(s for s in range(50) if imaging_parameters(s, config)["blur_z_sigma"] > 2)
    whole = render_region(shape, (slice(None),) * 3, seed, config)
    region = (slice(5, 12), slice(10, 40), slice(0, 30))
    for w, part in zip(whole, render_region(shape, region, seed, config), strict=True):
        np.testing.assert_array_equal(part, w[region])
    image = whole[0].astype(np.float32)
    # blur along Z: neighbouring slices are more alike than in a train-profile volume
    train = render_region(shape, (slice(None),) * 3, seed)[0].astype(np.float32)
    assert np.abs(np.diff(image, axis=0)).mean() < np.abs(np.diff(train, axis=0)).mean()


def test_sample_cli_writes_a_wide_volume(tmp_path, capsys):
    code = run(
        ["sample", tmp_path / "w.zarr", "--shape", "8", "64", "64", "--seed", "3", "--profile", "wide"]
    )
    assert code == 0, capsys.readouterr().err
    import zarr

    root = zarr.open_group(tmp_path / "w.zarr", mode="r")
    assert root.attrs["matseg"]["sample"]["config"]["profile"] == "wide"
