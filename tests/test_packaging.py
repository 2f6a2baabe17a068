"""A built wheel, installed into a fresh venv, provides a working `wconv` command."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", ROOT],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("wconv-*.whl")
    assert "wconv/inspection/devices.json" in zipfile.ZipFile(wheel).namelist()  # package data `wconv inspect` reads
    # The running environment (a venv or not) provides the heavy dependencies (torch, coremltools) through a
    # .pth line; its own .pth files (an editable wconv among them) are not read that way: wconv comes from the wheel.
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site_packages) / "outer-environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", wheel], check=True, capture_output=True)
    wconv = tmp_path / "venv" / "bin" / "wconv"

    where = subprocess.run([python, "-c", "import wconv, wconv.plugins.openai_whisper as p; print(wconv.__file__); print(p.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert all(str(tmp_path / "venv") in path for path in where), where

    help_text = subprocess.run([wconv, "--help"], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert "run" in help_text and "plugins" in help_text
    listing = subprocess.run([wconv, "plugins"], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    for family in ("openai", "ct2", "hf", "distil"):
        assert family in listing
