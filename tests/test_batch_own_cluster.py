"""`wconv batch --executor ray` with no cluster on the machine starts one for the batch and shuts it down.

A module of its own: test_batch's Ray cluster is shut down when that module ends (Ray's default address,
``auto``, joins any cluster running on this machine)."""

import json
import os
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

import pytest


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            if text in (line := cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")):
                found.append(line)
    return found


def test_with_no_cluster_running_a_local_one_is_started_for_the_batch_and_shut_down(tmp_path):
    pytest.importorskip("ray", reason='the Ray executor needs Ray: pip install -e ".[ray]"')
    manifest = tmp_path / "own-cluster.toml"
    manifest.write_text('executor = "ray"\noutput = "own-cluster"\n[[job]]\nmodel = "checkpoints/missing.pt"\nname = "tiny"\n')  # the name gives its dims
    with tempfile.TemporaryDirectory(prefix="wr", dir="/tmp") as tmp:  # Ray's sockets live here: a short path
        environment = {**os.environ, "TMPDIR": tmp}  # hides any other cluster of this machine (its address file is in TMPDIR)
        environment.pop("RAY_ADDRESS", None)
        result = subprocess.run([Path(sys.executable).with_name("wconv"), "batch", manifest, "--json"],
                                capture_output=True, text=True, env=environment, timeout=600)
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["error"].startswith("checkpoint checkpoints/missing.pt does not exist")
        assert "(started for this batch): 1 node" in " ".join(result.stderr.split())
        assert processes_mentioning(tmp) == []  # raylet, GCS and workers are gone
