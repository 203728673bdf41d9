"""The npe2 manifest is valid, as napari's own tool checks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_npe2_validate():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2), "validate", "matseg_napari"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout
