"""Tests for the synthetic cathode generator: determinism, region consistency, physics sanity."""

import dask
import numpy as np
import pytest
from scipy import ndimage

from matseg.errors import MatsegError
from matseg.synth import (
    PHASES,
    SampleConfig,
    imaging_parameters,
    render_region,
    sample_arrays,
)

SHAPE_3D = (24, 80, 96)
SHAPE_2D = (150, 170)


def full(shape):
    return tuple(slice(None) for _ in shape)


@pytest.fixture(scope="module")
def volume_3d():
    return render_region(SHAPE_3D, full(SHAPE_3D), seed=7)


@pytest.fixture(scope="module")
def difficult_volume():
    """Half hard, in patches smaller than the volume (the segmenters' training settings)."""
    config = SampleConfig(hard_fraction=0.5, difficulty_wavelength=(60.0, 200.0))
    return render_region((32, 192, 192), full((32, 192, 192)), seed=3, config=config)


def test_outputs_have_right_dtypes_shapes_and_ranges(volume_3d):
    image, phases, difficulty = volume_3d
    assert PHASES == ("pore", "carbon-binder", "active")
    for array, dtype in zip(volume_3d, (np.uint8, np.uint8, np.float32), strict=True):
        assert array.shape == SHAPE_3D
        assert array.dtype == dtype
    assert set(np.unique(phases)) == {0, 1, 2}
    assert 0.0 <= difficulty.min() and difficulty.max() <= 1.0
    assert image.std() > 10


def test_same_seed_is_identical_and_other_seed_differs(volume_3d):
    again = render_region(SHAPE_3D, full(SHAPE_3D), seed=7)
    other = render_region(SHAPE_3D, full(SHAPE_3D), seed=8)
    for a, b, c in zip(volume_3d, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "region",
    [
        (slice(0, 5), slice(70, 80), slice(0, 96)),
        (slice(7, 19), slice(13, 50), slice(41, 95)),
        (slice(23, 24), slice(0, 1), slice(95, 96)),
        (slice(None), slice(33, 34), slice(None)),
    ],
)
def test_region_equals_crop_of_full_render_3d(volume_3d, region):
    for whole, part in zip(volume_3d, render_region(SHAPE_3D, region, seed=7), strict=True):
        np.testing.assert_array_equal(part, whole[region])


def test_region_equals_crop_of_full_render_2d():
    whole = render_region(SHAPE_2D, full(SHAPE_2D), seed=11)
    for region in [
        (slice(0, 31), slice(100, 170)),
        (slice(57, 149), slice(3, 4)),
        (slice(149, 150), slice(None)),
    ]:
        for w, part in zip(whole, render_region(SHAPE_2D, region, seed=11), strict=True):
            np.testing.assert_array_equal(part, w[region])


def test_sample_arrays_do_not_depend_on_chunking(volume_3d):
    coarse = sample_arrays(SHAPE_3D, seed=7)
    fine = sample_arrays(SHAPE_3D, seed=7, chunks=(7, 33, 40))
    assert coarse["image"].dtype == np.uint8 and fine["difficulty"].dtype == np.float32
    assert fine["phases"].chunks[1] == (33, 33, 14)
    (coarse,), (fine,) = dask.compute(coarse), dask.compute(fine)
    for name, expected in zip(("image", "phases", "difficulty"), volume_3d, strict=True):
        np.testing.assert_array_equal(coarse[name], expected)
        np.testing.assert_array_equal(fine[name], expected)


@pytest.mark.parametrize("shape", [(32, 128, 128), (384, 384)])
def test_phase_fractions_are_cathode_like(shape):
    phases = render_region(shape, full(shape), seed=1)[1]
    pore, binder, active = (np.mean(phases == k) for k in range(3))
    assert 0.30 < pore < 0.50
    assert 0.10 < binder < 0.24
    assert 0.36 < active < 0.54


def test_difficulty_varies_and_hard_regions_are_noisier(difficult_volume):
    image, phases, difficulty = difficult_volume
    clean, hard = difficulty < 0.2, difficulty > 0.8
    assert clean.mean() > 0.1 and hard.mean() > 0.1
    # inside particles, away from their edges, the deviation from a local mean is noise
    # plus curtaining, not structure
    interior = ndimage.binary_erosion(phases == 2, iterations=3)
    image = image.astype(np.float32)
    residual = image - ndimage.gaussian_filter(image, (0, 2, 2))
    clean_std = residual[interior & clean].std()
    hard_std = residual[interior & hard].std()
    assert hard_std > 2.5 * clean_std
    assert clean_std < 10


def test_hard_fraction_controls_difficulty():
    shape = (16, 128, 128)
    easy = render_region(shape, full(shape), 5, SampleConfig(hard_fraction=0.0))[2]
    mostly_hard = render_region(shape, full(shape), 5, SampleConfig(hard_fraction=0.9))[2]
    assert easy.max() == 0.0
    assert mostly_hard.mean() > 0.6


def test_test_profile_uses_disjoint_noise_and_blur():
    train = [imaging_parameters(s, SampleConfig()) for s in range(20)]
    test = [imaging_parameters(s, SampleConfig(profile="test")) for s in range(20)]
    for name in ("noise_std", "hard_noise_std", "blur_sigma", "hard_blur_sigma"):
        assert max(p[name] for p in train) < min(p[name] for p in test)
    assert imaging_parameters(4) == imaging_parameters(4, SampleConfig())
    image = render_region((64, 64), full((64, 64)), 4, SampleConfig(profile="test"))[0]
    assert image.dtype == np.uint8


def test_config_round_trips_through_dict():
    config = SampleConfig(profile="test", noise_std=[2, 3], hard_fraction=0.3)
    assert config.noise_std == (2.0, 3.0)
    assert SampleConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.to_dict()["noise_std"], list)


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_region((64,), (slice(None),), 0),
        lambda: render_region((2, 2, 2, 2), full((2, 2, 2, 2)), 0),
        lambda: render_region((0, 16), full((0, 16)), 0),
        lambda: render_region((16, -4), full((16, -4)), 0),
        lambda: render_region((16, 16), (slice(None),), 0),
        lambda: render_region((16, 16), (slice(4, 4), slice(None)), 0),
        lambda: render_region((16, 16), full((16, 16)), -1),
        lambda: sample_arrays((16, 16), 0, chunks=(8,)),
        lambda: SampleConfig(profile="validation"),
        lambda: SampleConfig(active_fraction=1.2),
        lambda: SampleConfig(noise_std=(5.0, 1.0)),
    ],
)
def test_bad_arguments_raise_matseg_error(call):
    with pytest.raises(MatsegError):
        call()


def test_unknown_config_key_is_named():
    with pytest.raises(MatsegError, match="particle_radius") as info:
        SampleConfig.from_dict({"particle_radius": 4.0})
    assert "particle_radius_mean" in str(info.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("particle_radius_mean", "abc", "particle_radius_mean must be a number, got 'abc'"),
        ("particle_radius_mean", [1, 2], "particle_radius_mean must be a number, got [1, 2]"),
        ("particle_radius_mean", True, "particle_radius_mean must be a number, got True"),
        ("shine_depth", 2.5, "shine_depth must be an integer, got 2.5"),
    ],
)
def test_a_number_given_as_text_or_a_list_is_named(key, value, message):
    """A YAML config's number written as text or a list reached the checks as a TypeError
    (a traceback from `matseg sample --config`), and `true` was taken as 1."""
    with pytest.raises(MatsegError) as info:
        SampleConfig.from_dict({key: value})
    assert str(info.value) == message


def test_numbers_of_any_numeric_kind_are_kept():
    import numpy as np

    config = SampleConfig.from_dict({"particle_radius_mean": np.int64(7), "shine_depth": 4.0})
    assert config.particle_radius_mean == 7.0 and isinstance(config.particle_radius_mean, float)
    assert config.shine_depth == 4 and isinstance(config.shine_depth, int)


def test_small_region_of_huge_volume_is_cheap_and_consistent():
    # would need terabytes if anything scaled with the whole shape
    shape = (4000, 30000, 30000)
    outer = (slice(3980, 4000), slice(29900, 30000), slice(15000, 15100))
    inner = (slice(3991, 4000), slice(29950, 30000), slice(15033, 15071))
    for big, small in zip(render_region(shape, outer, 123), render_region(shape, inner, 123), strict=True):
        np.testing.assert_array_equal(big[11:, 50:, 33:71], small)
