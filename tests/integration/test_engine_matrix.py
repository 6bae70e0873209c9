"""The engine-specific part of the suite (`-m engines`) on each extra engine of
scripts/setup-engines.sh: a remote Docker that cannot see the client's files, gVisor, Podman.
An engine that is not running FAILS here (CI starts them: .ci/run); deselect with
`-m "not matrix"` when you have not set them up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-engines.sh"


@pytest.mark.matrix
@pytest.mark.parametrize("engine", ["remote", "gvisor", "podman"])
def test_engine_part_of_the_suite(engine: str) -> None:
    status = subprocess.run([str(SETUP), "status"], capture_output=True, text=True,
                            timeout=60).stdout
    line = next((ln for ln in status.splitlines() if ln.split()[:1] == [engine]), "")
    if line.endswith("down") or not line:
        pytest.fail(f"engine {engine} is not running: `sudo scripts/setup-engines.sh start`")
    proc = subprocess.run(
        [str(SETUP), "run", engine, "--", sys.executable, "-m", "pytest", "-p",
         "no:cacheprovider", "-q", "-x", "-m", "engines", "tests/integration/test_engines.py",
         "tests/integration/test_volume_export.py"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{engine}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
