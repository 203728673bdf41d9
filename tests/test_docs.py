"""The docs say what the code does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    sys.path.insert(0, str(ROOT / "docs" / "tools"))
    from cli_reference import reference

    assert (ROOT / "docs" / "cli.md").read_text() == reference(), (
        "docs/cli.md is stale: python docs/tools/cli_reference.py > docs/cli.md"
    )


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_sample_configs_are_what_docs_say():
    """data/sample.yaml is the generator's default; the segmenters' training config differs
    only in having more, smaller hard regions."""
    import dataclasses

    from matseg.sample import load_sample_config
    from matseg.synth import SampleConfig

    assert load_sample_config(ROOT / "data" / "sample.yaml") == SampleConfig()
    training = load_sample_config(ROOT / "data" / "segmenter-training.yaml")
    assert training == dataclasses.replace(
        SampleConfig(), hard_fraction=0.5, difficulty_wavelength=(60.0, 200.0)
    )
