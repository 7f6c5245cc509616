"""Tests of the analysis package itself: importing it has no heavy side effects."""

from __future__ import annotations

import subprocess
import sys


def test_import_has_no_heavy_side_effects():
    code = "import sys, analysis; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
