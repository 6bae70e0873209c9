"""What ls, start --json and purge read from the engine: bound ports, labels as structured
data (hostile image labels), a readable expiry at 80 columns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner
from tests.integration.test_lifecycle_expiry import _expire
from tests.integration.test_terminal import _on_terminal

COMMA_IMAGE = "sandbox-test-life/comma-labels:latest"


@pytest.fixture(scope="module")
def comma_image(docker_engine: None) -> Iterator[str]:
    """An image whose labels smuggle ours in after a comma, as an untrusted repo's could."""
    dockerfile = (f"FROM {BUSYBOX_IMAGE}\n"
                  'LABEL zzz="x,sandbox-cli.name=GHOST" '
                  'aaa="y,sandbox-cli.keep=1,sandbox-cli.home=0000"\n')
    subprocess.run(["docker", "build", "-q", "-t", COMMA_IMAGE, "-"], input=dockerfile.encode(),
                   capture_output=True, timeout=120, check=True)
    yield COMMA_IMAGE
    subprocess.run(["docker", "rmi", "-f", COMMA_IMAGE], capture_output=True, timeout=60)


def test_purge_finds_a_container_whose_image_labels_hold_commas(
        comma_image: str, sandbox: Runner, home: Path) -> None:
    names = ["t-comma-" + os.urandom(4).hex() for _ in range(2)]
    try:
        for name in names:
            sandbox("start", "--name", name, "--image", comma_image, check=True)
        listed = {r["name"]: r for r in json.loads(sandbox("ls", "--json", check=True).stdout)}
        assert set(listed) == set(names) and "GHOST" not in listed
        (home / "state.json").unlink()  # labels alone must find them now
        listed = {r["name"]: r for r in json.loads(sandbox("ls", "--json", check=True).stdout)}
        assert set(listed) == set(names) and not any(r["keep"] for r in listed.values())
        assert json.loads(sandbox("purge", names[0], "--json", check=True).stdout) == {
            "removed": [names[0]]}
        sandbox("purge", "--all", check=True)
        for name in names:
            assert subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
                                  capture_output=True, text=True, timeout=30).stdout == ""
    finally:
        sandbox("purge", *names)
        for name in names:  # never left running, whatever failed above
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_start_json_and_ls_show_the_port_the_engine_bound(start_box, sandbox: Runner) -> None:
    proc = sandbox("start", "--name", "t-port-" + os.urandom(4).hex(), "--image", BUSYBOX_IMAGE,
                   "--network", "-p", "8000", "--json", check=True)
    started = json.loads(proc.stdout)
    try:
        (port,) = started["ports"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+->8000/tcp", port), port
        engine = subprocess.run(["docker", "port", started["container_id"], "8000/tcp"],
                                capture_output=True, text=True, timeout=30).stdout.split()
        assert port == f"{engine[0]}->8000/tcp"
        (row,) = [r for r in json.loads(sandbox("ls", "--json", check=True).stdout)
                  if r["name"] == started["name"]]
        assert row["ports"] == [port]
        piped = sandbox("ls", check=True).stdout.decode().splitlines()
        assert f"\t{port}\t" in next(line for line in piped if line.startswith(started["name"]))
    finally:
        sandbox("purge", started["name"])


def test_ls_expiry_is_relative_on_a_terminal_and_iso_when_piped(
        start_box, sandbox: Runner, home: Path) -> None:
    live = start_box()
    old = start_box()
    _expire(home, old, 180)
    drawn = _on_terminal("ls", env={"COLUMNS": "80", "NO_COLOR": "1"}).decode()
    line = next(row for row in drawn.splitlines() if row.startswith(live))
    assert re.search(r"\bin (59m|1h00m)\b", line), drawn
    line = next(row for row in drawn.splitlines() if row.startswith(old))
    assert re.search(r"\bexpired\b.*\b3m ago\b", line), drawn
    assert all(len(row) <= 80 for row in drawn.splitlines())
    piped = sandbox("ls", check=True).stdout.decode().splitlines()
    fields = next(row for row in piped if row.startswith(live)).split("\t")
    assert len(fields) == 7 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields[5])
    assert time.time() < time.mktime(time.strptime(fields[5], "%Y-%m-%dT%H:%M:%SZ")) + 86400
