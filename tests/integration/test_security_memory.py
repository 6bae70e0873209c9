"""Output a sandbox produces can be unbounded: `read` of a huge file, a streamed exec and a
captured (--json) exec of a gigabyte must keep the host process small."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox_cli.execute import DEFAULT_MAX_CAPTURE
from tests.conftest import CLI, Runner

PEAK_RSS_LIMIT_KB = 100 * 1024  # 100 MiB for the sandbox process (and the docker client)
GIGABYTE = 1 << 30
ONE_BILLION = 1_000_000_000

# Fallback when GNU time is missing: the peak RSS of the command (and whatever it waited for).
_RUSAGE_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    fh.write("Maximum resident set size (kbytes): %d\\n"
             % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_measured(argv: list[str], keep: bool = False) -> tuple[int, int, int, bytes]:
    """Run ARGV with its stdout piped to us (the consumer).

    Returns (exit code, peak RSS in kB, bytes received, the bytes themselves when KEEP).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        if shutil.which("time") == "/usr/bin/time" or os.path.exists("/usr/bin/time"):
            full = ["/usr/bin/time", "-v", "-o", report.name, *argv]
        else:
            full = [sys.executable, "-c", _RUSAGE_WRAPPER, report.name, *argv]
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None
        received, kept = 0, bytearray()
        while chunk := proc.stdout.read(1 << 20):
            received += len(chunk)
            if keep:
                kept += chunk
        err = proc.stderr.read() if proc.stderr else b""
        code = proc.wait(timeout=120)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read())
    assert match, f"no RSS report; stderr: {err!r}"
    return code, int(match.group(1)), received, bytes(kept)


def test_read_of_a_gigabyte_file_streams_in_bounded_memory(box: str, sandbox: Runner,
                                                           home: Path) -> None:
    sandbox("exec", box, "truncate", "-s", "1G", "/app/big", check=True)
    assert (home / "volumes" / box / "big").stat().st_size == GIGABYTE
    code, peak_kb, received, _ = run_measured([*CLI, "read", box, "big"])
    print(f"\nread 1 GiB: peak RSS {peak_kb} kB")
    assert code == 0
    assert received == GIGABYTE
    assert peak_kb < PEAK_RSS_LIMIT_KB


def test_streamed_exec_of_a_gigabyte_in_bounded_memory(box: str) -> None:
    code, peak_kb, received, _ = run_measured(
        [*CLI, "exec", box, "sh", "-c", f"head -c {ONE_BILLION} /dev/zero"])
    print(f"\nexec 1 GB streamed: peak RSS {peak_kb} kB")
    assert code == 0
    assert received == ONE_BILLION
    assert peak_kb < PEAK_RSS_LIMIT_KB


def test_captured_exec_of_a_gigabyte_is_truncated_in_bounded_memory(box: str) -> None:
    # NUL bytes are the worst case for JSON: each becomes the six characters \u0000.
    script = f"echo to-stderr >&2; head -c {ONE_BILLION} /dev/zero; exit 3"
    code, peak_kb, received, out = run_measured([*CLI, "exec", "--json", box, "sh", "-c", script],
                                                keep=True)
    print(f"\nexec --json 1 GB: peak RSS {peak_kb} kB, {received} bytes of JSON")
    assert code == 3
    result = json.loads(out)
    assert result["exitCode"] == 3 and result["failed"] is True
    assert result["stdoutTruncated"] is True and result["stderrTruncated"] is False
    assert len(result["stdout"]) == DEFAULT_MAX_CAPTURE
    assert set(result["stdout"]) == {"\0"}
    assert result["stderr"] == "to-stderr\n"
    assert peak_kb < PEAK_RSS_LIMIT_KB
