"""Whether a volume fits the weights, and the way out when it does not: a label-free start,
corrections, segmenters and a selector trained on them, a run with the new weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import zarr

import matseg
from matseg import MatsegError
from matseg.candidates.fit import STATISTICS, load_statistics
from matseg.models.store import default_weights_dir, load_segmenter, sha256_of
from matseg.selector.policy import load_selector

from .conftest import run, smooth_noise

EMPS = default_weights_dir().parents[2] / "data" / "emps" / "image.tif"


def _sample(path, seed=303, invert=False):
    """A 'test'-profile cathode of 8 x 256 x 256 (optionally with inverted grey levels)."""
    from matseg.sample import write_sample
    from matseg.synth.config import SampleConfig

    write_sample(path, (8, 256, 256), seed=seed, config=SampleConfig(profile="test"))
    if invert:
        image = zarr.open_array(str(path / "0"), mode="r+")
        data = image[:]
        image[:] = data.max() + data.min() - data
    return path


def test_bundled_weights_record_their_training_statistics():
    """Recorded beside the weights without changing them: every hash in the manifest still holds."""
    statistics = load_statistics(None)
    cheap = load_segmenter("cheap")
    assert statistics is not None and statistics["sha256"] == cheap.sha256
    (entry,) = statistics["sets"]
    assert entry["tiles"] >= 100 and len(entry["quantiles"]) == 15
    assert all(lo <= mid <= hi for lo, mid, hi in zip(entry["low"], entry["median"], entry["high"]))
    for name in ("medium", "expensive"):
        assert load_segmenter(name).sha256
    assert load_selector().sha256


def test_a_test_profile_volume_fits_and_inverted_contrast_does_not(tmp_path, capsys):
    plain = _sample(tmp_path / "plain.zarr")
    report = matseg.segment(plain, tmp_path / "plain-phases.zarr")
    assert report["fit"]["fits"] and report["fit"]["distance"] <= report["fit"]["threshold"]
    assert "advice" not in report["fit"]
    assert "/" not in report["fit"]["nearest"]  # names, not the training machine's folders

    inverted = _sample(tmp_path / "inverted.zarr", invert=True)
    assert run(["segment", inverted, "-o", tmp_path / "inverted-phases.zarr", "--quiet"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "inverted-phases.zarr" / "matseg-report.json").read_text())
    fit = saved["fit"]
    assert not fit["fits"] and fit["distance"] > fit["threshold"]
    assert fit["polarity"]["confirmed"] and fit["polarity"]["inverted"] < fit["polarity"]["as_is"]
    assert "--model classical" in fit["advice"] and "--from-corrections" in fit["advice"]
    lines = [line for line in out.splitlines() if "training data" in line]
    assert len(lines) == 1 and "UNLIKE" in lines[0] and "--model classical" in lines[0]


def test_a_dry_run_says_whether_the_volume_fits(tmp_path, capsys):
    """Before anything costly runs: the dry run's summary and report carry the fit check."""
    inverted = _sample(tmp_path / "inverted.zarr", invert=True)
    out = tmp_path / "phases.zarr"
    assert run(["segment", inverted, "-o", out, "--dry-run", "--quiet"]) == 0
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "training data" in line]
    assert len(lines) == 1 and lines[0].strip().startswith("fit ") and "UNLIKE" in lines[0], lines
    assert "(1 tile)" in said.out.splitlines()[0]  # not "1 tiles"
    report = matseg.segment(inverted, out, dry_run=True)
    assert not report["fit"]["fits"] and "--model classical" in report["fit"]["advice"]


def test_grey_levels_that_look_inverted_count_only_where_the_net_is_surer_of_them_inverted():
    """The intensity distribution of the training data reflected looks inverted, but other phase
    proportions can look so too: the net decides, asked only where the contrast part is over."""
    from matseg.candidates.fit import fit_of

    statistics = load_statistics(None)
    reflected = [1.0 - q for q in statistics["sets"][0]["quantiles"][::-1]]
    asked = []

    def probe(as_is, inverted):
        return lambda: asked.append(1) or {"as_is": as_is, "inverted": inverted}

    surer_inverted = fit_of(statistics, reflected, None, "", probe=probe(0.3, 0.15))
    assert not surer_inverted["fits"] and surer_inverted["polarity"]["confirmed"]
    assert surer_inverted["distance"] == surer_inverted["contrast"] > 1
    surer_as_is = fit_of(statistics, reflected, None, "", probe=probe(0.13, 0.16))
    assert surer_as_is["polarity"] == {"as_is": 0.13, "inverted": 0.16, "confirmed": False}
    assert surer_as_is["contrast"] > 1 and surer_as_is["distance"] == surer_as_is["intensity"]
    assert surer_as_is["fits"] == (surer_as_is["intensity"] <= 1)
    plain = fit_of(statistics, statistics["sets"][0]["quantiles"], None, "", probe=probe(0.1, 0.2))
    assert plain["fits"] and "polarity" not in plain and len(asked) == 2  # not asked: contrast within


def test_the_polarity_probe_finds_a_scan_off_centre(tmp_path):
    """A scan in a corner of a wide field of zeros: the probe reads where the scan is, and the
    cheap net is surer of the inverted scan inverted."""
    from matseg.candidates.fit import polarity
    from matseg.normalize import Normalization

    scan = matseg.open_volume(_sample(tmp_path / "inverted.zarr", invert=True)).data[:4].compute()
    field = np.zeros((4, 1200, 1200), scan.dtype)
    field[:, 900:1156, 900:1156] = scan
    norm = Normalization(float(scan.min()), float(scan.max()))
    asked = polarity(load_segmenter("cheap"), field, norm)
    assert asked["inverted"] < asked["as_is"], asked


def test_a_sample_whose_phase_proportions_look_inverted_fits(tmp_path):
    """A generator-default sample the nets segment at 0.96 mIoU, whose grey-level distribution
    reflected lies nearer the training data's (contrast part 1.79): the cheap net is surer of it
    as it is, so it fits."""
    from matseg.sample import write_sample

    path = tmp_path / "s4.zarr"
    write_sample(path, (32, 384, 384), seed=4)
    report = matseg.segment(path, tmp_path / "phases.zarr", model="cheap")
    fit = report["fit"]
    assert fit["contrast"] > 1 and not fit["polarity"]["confirmed"], fit
    assert fit["fits"] and fit["distance"] == fit["intensity"] < 1


def test_a_small_volume_that_does_not_fit_is_asked_about_not_judged():
    """The thresholds hold on volumes of ~1 M voxels; a small crop that lies beyond them may do
    so by chance (its own phase proportions), so its line asks, with the way out all the same."""
    from matseg.candidates.fit import CALIBRATED_VOXELS, describe_fit, fit_of

    statistics = load_statistics(None)
    inverted = [1.0 - q for q in statistics["sets"][0]["quantiles"][::-1]]
    verdict = fit_of(statistics, inverted, None, "", voxels=CALIBRATED_VOXELS)
    question = fit_of(statistics, inverted, None, "", voxels=8 * 96 * 96)
    assert not verdict["fits"] and "small" not in verdict
    assert not question["fits"] and question["small"] == 8 * 96 * 96
    assert question["distance"] == verdict["distance"]  # the same measure, said otherwise
    assert describe_fit(verdict).startswith("UNLIKE the weights' training data (distance")
    said = describe_fit(question)
    assert said.startswith("UNLIKE the weights' training data? (distance") and "73,728 voxels" in said
    assert said.endswith(verdict["advice"]) and "--model classical" in said
    fits = fit_of(statistics, statistics["sets"][0]["quantiles"], None, "", voxels=1000)
    assert fits["fits"] and "small" not in fits


def test_a_labs_own_weights_that_do_not_fit_are_pointed_to_fine_tuning(tmp_path):
    """The label-free start is the way out for the bundled weights; for a lab's own weights it
    would throw away what they learnt (a held-out EMPS image flagged under EMPS-trained weights)."""
    from matseg.candidates.fit import ADVICE, OWN_ADVICE, check_fit

    own = tmp_path / "own-weights"
    shutil.copytree(default_weights_dir(), own)
    inverted = [1.0 - q for q in load_statistics(None)["sets"][0]["quantiles"][::-1]]
    assert check_fit(None, inverted, None, "")["advice"] == ADVICE
    assert check_fit(default_weights_dir(), inverted, None, "")["advice"] == ADVICE
    said = check_fit(own, inverted, None, "")["advice"]
    assert said == OWN_ADVICE and "--model classical" not in said and "--from-corrections" in said


def test_electron_microscopy_images_do_not_fit_the_cathode_weights(tmp_path):
    """Real EMPS images (two phases) under the bundled three-phase weights, one model everywhere:
    the intensities alone tell."""
    images = tmp_path / "emps.tif"
    tifffile.imwrite(images, tifffile.imread(EMPS)[:2])
    report = matseg.segment(images, tmp_path / "phases.zarr", model="cheap")
    assert not report["fit"]["fits"] and report["fit"]["uncertainty"] is None


def test_statistics_only_records_without_touching_the_networks(tmp_path, small_sample, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(default_weights_dir(), weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    del manifest[STATISTICS]
    (weights / "manifest.json").write_text(json.dumps(manifest))
    hashes = {p.name: sha256_of(p) for p in weights.glob("*.pt")}
    assert run(["train", small_sample, "-o", weights, "--statistics-only"]) == 0
    assert "training statistics of" in capsys.readouterr().out
    assert {p.name: sha256_of(p) for p in weights.glob("*.pt")} == hashes
    statistics = load_statistics(weights)
    assert statistics["sets"][0]["source"] == str(small_sample)
    report = matseg.segment(small_sample, tmp_path / "phases.zarr", model="cheap", weights=weights)
    assert report["fit"]["fits"]  # the very volume it was measured on


def _particles(path, seed=0):
    """Two phases, dark background and bright particles, 8 x 128 x 128, with their truth."""
    field = np.stack([smooth_noise((128, 128), seed=seed + z) for z in range(8)])
    truth = (field > np.median(field)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = (60 + 120 * truth + rng.normal(0, 12, truth.shape)).clip(0, 255).astype(np.uint8)
    zarr.save_array(str(path), image, zarr_format=3)
    return path, truth


def test_the_way_out_from_no_weights_with_the_volumes_own_phases(tmp_path, capsys):
    """classical -> corrections -> segmenters and selector from them -> a run with the new weights."""
    volume, truth = _particles(tmp_path / "particles.zarr")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()  # no manifest: reading any weights would fail
    first = tmp_path / "phases.zarr"
    code = run(
        ["segment", volume, "-o", first, "--model", "classical", "--phases", "background,particle",
         "--weights", no_weights, "--tile", "4,64,64", "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    segmentation = matseg.open_segmentation(first)
    assert segmentation.phase_names == ("background", "particle")

    labels = segmentation.phases.compute()
    labels[[1, 5]] = truth[[1, 5]]  # a reviewer corrects two slices
    corrections = matseg.save_corrections(first, labels, reviewed=[(0, 0, 0), (1, 1, 1)])
    weights = tmp_path / "mine"
    results = matseg.finetune_from_corrections(corrections, weights, steps=30, patch=64, selector_steps=100)
    assert set(results) == {"cheap", "medium", "expensive", "selector"}
    assert all(results[m]["miou_before"] is None for m in ("cheap", "medium", "expensive"))
    assert results["selector"]["trained"], results["selector"]
    manifest = json.loads((weights / "manifest.json").read_text())
    assert all(manifest[m]["phases"] == ["background", "particle"] for m in ("cheap", "medium", "expensive"))
    assert manifest["selector"]["segmenters"]["cheap"] == manifest["cheap"]["sha256"]
    assert load_statistics(weights) is not None

    report = matseg.segment(volume, tmp_path / "again.zarr", weights=weights, tile=(4, 64, 64))
    assert report["phases"] == ["background", "particle"] and report["model"] == "auto"
    assert report["fit"]["fits"], report["fit"]
    assert set(report["decisions"]) == set(manifest["selector"]["candidates"])


def test_classical_phases_are_refused_with_a_network_model():
    with pytest.raises(MatsegError, match="--phases names the phases of --model classical"):
        matseg.Settings(model="cheap", phases=("a", "b"))
    with pytest.raises(MatsegError, match="at least 2 distinct"):
        matseg.Settings(model="classical", phases=("a", "a"))
    with pytest.raises(MatsegError, match="tells at most 8 apart by intensity"):
        matseg.Settings(model="classical", phases=tuple("abcdefghi"))


def test_classical_thresholds_for_many_phases_come_in_seconds():
    """Multi-Otsu over 256 bins searched for hours from 6 classes on: the bins shrink there."""
    from matseg.normalize import multiotsu_thresholds

    sample = np.random.default_rng(0).normal(0, 1, 200_000)
    for n in (6, 7, 8):
        thresholds = multiotsu_thresholds(sample, n)
        assert len(thresholds) == n - 1 and np.all(np.diff(thresholds) > 0)


@pytest.fixture
def corrected_run(tmp_path, random_weights, small_sample):
    """A selector run of the small sample; its corrections to the truth on slices ``z``."""

    def corrected(slices):
        out = tmp_path / "phases.zarr"
        if not out.exists():
            matseg.segment(small_sample, out, weights=random_weights, tile=(4, 64, 64))
        labels = matseg.open_segmentation(out).phases.compute()
        truth = matseg.open_volume(small_sample, labels=True).data.compute()
        labels[slices] = truth[slices]
        return matseg.save_corrections(out, labels, weights=random_weights, replace=True)

    return corrected


def test_finetuning_retrains_the_selector_for_the_new_segmenters(
    corrected_run, random_weights, small_sample, tmp_path
):
    old = json.loads((random_weights / "manifest.json").read_text())
    tuned = tmp_path / "tuned"
    path = corrected_run([1, 9])
    results = matseg.finetune_from_corrections(path, tuned, steps=5, patch=64, selector_steps=50)
    assert results["selector"]["trained"] and results["selector"]["tiles"] == 2
    new = json.loads((tuned / "manifest.json").read_text())
    assert new["selector"]["sha256"] != old["selector"]["sha256"]
    assert new["selector"]["segmenters"] == {m: new[m]["sha256"] for m in ("cheap", "expensive")}
    assert new["cheap"]["sha256"] != old["cheap"]["sha256"]
    assert "corrected slices" in new["selector"]["trained_on"][0]
    report = matseg.segment(small_sample, tmp_path / "again.zarr", weights=tuned, tile=(4, 64, 64))
    assert report["selector"]["sha256"] == new["selector"]["sha256"]


def test_finetuning_never_keeps_the_old_selector(corrected_run, tmp_path, small_sample, capsys):
    """Too few corrected tiles to retrain it: the new folder has none, and says so."""
    path = corrected_run([5])
    tuned = tmp_path / "tuned"
    assert run(["train", "--from-corrections", path, "-o", tuned, "--steps", "5", "--patch", "64"]) == 0
    out = capsys.readouterr().out
    assert "selector: none in" in out and "at least 2 labelled tiles" in out
    assert "--tile" not in out and "matseg-selector-" not in out  # no advice for another command
    assert "selector" not in json.loads((tuned / "manifest.json").read_text())
    assert not (tuned / "selector.pt").exists()
    with pytest.raises(MatsegError, match="has no selector"):
        matseg.segment(small_sample, tmp_path / "auto.zarr", weights=tuned, tile=(4, 64, 64))
    report = matseg.segment(small_sample, tmp_path / "cheap.zarr", weights=tuned, model="cheap")
    assert report["model"] == "cheap"


def test_the_fit_warning_is_said_once(tmp_path, small_sample, capsys, monkeypatch):
    """The summary's fit line says it; the log line it would repeat comes only where a run
    ends without a summary."""
    inverted = tmp_path / "inverted.zarr"
    shutil.copytree(small_sample, inverted)
    image = zarr.open_array(str(inverted / "0"), mode="r+")
    data = image[:]
    image[:] = data.max() + data.min() - data
    out = tmp_path / "phases.zarr"
    assert run(["segment", inverted, "-o", out, "--model", "cheap", "--quiet"]) == 0
    said = capsys.readouterr()
    fit = json.loads((out / "matseg-report.json").read_text())["fit"]
    assert not fit["fits"] and "advice" in fit  # kept in the report
    lines = [line for line in (said.out + said.err).splitlines() if "training data" in line]
    assert len(lines) == 1 and lines[0].strip().startswith("fit ") and "UNLIKE" in lines[0], lines

    def fails(*args, **kwargs):
        raise MatsegError("no seam score today")

    monkeypatch.setattr("matseg.pipeline.run.seam_score", fails)
    args = ["segment", inverted, "-o", tmp_path / "again.zarr", "--model", "cheap", "--quiet"]
    assert run(args) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err.count("UNLIKE the weights' training data") == 1, said.err
