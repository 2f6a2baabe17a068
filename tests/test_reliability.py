"""Bad input and hostile conditions: one line, the promised exit code, nothing partial. A broken plugin breaks
nothing else; runs into one output never collide; --force leaves no stale files; SIGTERM and Ctrl-C clean up;
a full disk says how much space is needed; the Python API is as quiet as the CLI."""

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import wconv
from wconv.cli import cli
from wconv.files import full_device
from wconv.manager import get_plugin_manager
from wconv.tools.random_checkpoints import write_random_checkpoint

NOTES_PLUGIN = '''
import os
import signal

import wconv


class Notes(wconv.Layout):
    """No Core ML: one note per run, named after --ggml-type, $NOTES_SIZE bytes long; then stops as
    $NOTES_INTERRUPT (Ctrl-C) or $NOTES_TERMINATE (SIGTERM) say."""

    name = "notes"

    def plan(self, model, job):
        return []

    def extra_files(self, model, job):
        return [f"{model.name}-{job.ggml_type}.txt"]

    def write_extra_files(self, model, job, folder):
        (note,) = self.extra_files(model, job)
        (folder / note).write_bytes(b"x" * int(os.environ.get("NOTES_SIZE", "10")))
        if os.environ.get("NOTES_INTERRUPT"):
            raise KeyboardInterrupt
        if os.environ.get("NOTES_TERMINATE"):
            os.kill(os.getpid(), signal.SIGTERM)
        return [{"file": note, "kind": "note"}]


@wconv.hookimpl
def wconv_register_layouts(register):
    register(Notes())
'''


def invoke(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(arg) for arg in args])


def plugin_site(folder: Path, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A folder that, on sys.path, installs a distribution with these ``wconv`` entry points and modules."""
    info = folder / "wconv_test_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wconv-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wconv]\n" + "".join(f"{name} = {module}\n" for name, module in entry_points.items()))
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source)
    return folder


@pytest.fixture(scope="module")
def tiny_pt(module_tmp):
    return write_random_checkpoint(module_tmp("tiny") / "tiny.pt", "tiny", seed=1)


@pytest.fixture
def notes(tmp_path, monkeypatch):
    """The notes layout registered through an installed entry point (for the CLI) and a plugin manager with it."""
    site = plugin_site(tmp_path / "site", {"notes": "notes_plugin"}, {"notes_plugin": NOTES_PLUGIN})
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_plugin_that_fails_to_load_is_one_warning_and_everything_else_works(tmp_path, monkeypatch):
    from wconv import manager

    misspelt = "import wconv\n\n@wconv.hookimpl\ndef wconv_laod(job):\n    return None\n"
    site = plugin_site(tmp_path, {"acme": "acme_missing", "typo": "typo_plugin"}, {"typo_plugin": misspelt})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(manager, "WARNED", set())
    listed = invoke("plugins", "--json")
    assert listed.exit_code == 0, listed.output
    assert listed.stderr.splitlines() == [
        "Warning: plugin 'acme' failed to load: ModuleNotFoundError: No module named 'acme_missing'; disable with WCONV_DISABLE_PLUGINS=acme",
        "Warning: plugin 'typo' failed to load: PluginValidationError: unknown hook 'wconv_laod' in plugin "
        f"{sys.modules['typo_plugin']!r}; disable with WCONV_DISABLE_PLUGINS=typo"]
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["acme"]["error"].startswith("ModuleNotFoundError") and rows["typo"]["error"].startswith("PluginValidationError")
    assert "typo" not in wconv.manager.family_names(get_plugin_manager())
    families = invoke("families", "--json")
    assert families.exit_code == 0 and {"openai", "ct2", "hf", "distil"} <= {row["name"] for row in json.loads(families.stdout)}
    quiet = invoke("plugins", "--json", env={"WCONV_DISABLE_PLUGINS": "acme,typo"})
    assert quiet.stderr == "" and not {"acme", "typo"} & {row["name"] for row in json.loads(quiet.stdout)}


def test_a_text_file_named_pt_is_one_line_exit_2(tmp_path):
    (tmp_path / "notes.pt").write_text("hello\n")
    result = invoke("run", tmp_path / "notes.pt", "-o", tmp_path / "out")
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert f"cannot read {tmp_path / 'notes.pt'}: it is truncated or not a torch checkpoint" in result.output
    assert not (tmp_path / "out").exists()


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["openai .pt", "hf pytorch_model.bin"])
def test_an_unsafe_pickle_is_refused_as_unsafe_with_how_to_get_a_safe_file(tmp_path, layout):
    marker = tmp_path / "code-ran"
    if layout == "openai .pt":
        source = checkpoint = tmp_path / "evil.pt"
    else:
        source = tmp_path / "hf-model"
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "whisper"}))
        checkpoint = source / "pytorch_model.bin"
    torch.save({"dims": {}, "model_state_dict": RunsCode(marker)}, checkpoint)
    result = invoke("run", source, "-o", tmp_path / "out")
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert f"{checkpoint} was refused as unsafe" in result.output and "(it imports posix.system)" in result.output
    assert ".safetensors" in result.output and "re-save it" in result.output and "weights_only" not in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_error_details_are_shortened_at_a_word():
    from wconv.plugins.hf_whisper.checkpoint import describe

    text = "word " * 60
    short = describe(RuntimeError(text))
    assert short.endswith(" …") and len(short) < 230
    assert all(word in ("RuntimeError:", "word", "…") for word in short.split())


def test_audio_lengths_of_one_length_and_verify_against_a_model_of_other_dims(tmp_path, tiny_pt):
    result = invoke("run", tiny_pt, "--audio-lengths", "3000,3000", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "--audio-lengths 3000,3000 gives one length" in result.output, result.output
    package = tmp_path / "converted" / "ggml-base-encoder.mlpackage"
    package.mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    base_dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_vocab=51865,
                     n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6)
    manifest = {"family": "openai", "source": "base.pt", "name": "base", "checkpoint_sha256": "0" * 64, "dims": base_dims,
                "options": {}, "artifacts": [{"file": package.name, "kind": "encoder", "inputs": [], "outputs": []}], "verify": []}
    (package.parent / "base.manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", package, "--against", tiny_pt)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert f"{tiny_pt} is not the model ggml-base-encoder.mlpackage was converted from, nor one of its size " \
           "(n_audio_state 512 vs 384, n_audio_head 8 vs 6" in result.output


def test_force_removes_what_the_replaced_run_wrote_and_this_one_does_not(tmp_path, tiny_pt, notes):
    output = tmp_path / "out"
    assert invoke("run", tiny_pt, "--layout", "notes", "--ggml-type", "q8_0", "-o", output).exit_code == 0
    (output / "mine.txt").write_text("not wconv's")
    again = invoke("run", tiny_pt, "--layout", "notes", "-o", output)
    assert again.exit_code == 2 and f"{output / 'tiny.manifest.json'} already exists: pass --force" in again.output
    assert invoke("run", tiny_pt, "--layout", "notes", "-o", output, "--force").exit_code == 0
    assert sorted(path.name for path in output.iterdir()) == ["mine.txt", "tiny-f16.txt", "tiny.manifest.json"]
    assert [entry["file"] for entry in wconv.read_manifest(output)["artifacts"]] == ["tiny-f16.txt"]


def test_a_second_run_is_refused_while_one_runs_and_dead_runs_staging_is_removed(tmp_path, tiny_pt, notes):
    output = tmp_path / "out"
    live, dead, other = (output / f".wconv-staging-{name}" for name in ("tiny-live0000", "tiny-dead0000", "small-live0000"))
    for folder in (live, dead, other):
        (folder / "part").mkdir(parents=True)
    long_ago = time.time() - 3600
    for folder in (live, dead, other):
        os.utime(folder, (long_ago, long_ago))
    holders = [os.open(folder, os.O_RDONLY) for folder in (live, other)]
    for holder in holders:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a running wconv holds its staging dir
    try:
        refused = invoke("run", tiny_pt, "--layout", "notes", "-o", output)
        assert refused.exit_code == 2, refused.output
        assert refused.output.splitlines()[-1] == (f"Error: another wconv run is writing tiny into {output} now: "
                                                   "wait for it to end, or choose another --output")
        assert f"removed {dead}, left by a wconv run that did not finish" in refused.stderr
        os.close(holders.pop(0))  # the run in ``live`` dies
        done = invoke("run", tiny_pt, "--layout", "notes", "-o", output)
        assert done.exit_code == 0, done.output
        assert f"removed {live}, left by a wconv run that did not finish" in done.stderr
        assert sorted(path.name for path in output.iterdir()) == [other.name, "tiny-f16.txt", "tiny.manifest.json"]
    finally:
        for holder in holders:
            os.close(holder)


def test_ctrl_c_exits_130_and_sigterm_143_leaving_nothing(tmp_path, tiny_pt, notes):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        for stop, code, said in (("NOTES_INTERRUPT", 130, "Interrupted"), ("NOTES_TERMINATE", 143, "Terminated")):
            result = invoke("run", tiny_pt, "--layout", "notes", "-o", tmp_path / "out", env={stop: "1"})
            assert result.exit_code == code and result.stderr.splitlines()[-1] == f"{said}: the unfinished run's files were removed"
            assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_full_disk_is_one_line_with_the_space_needed_and_nothing_left(tmp_path, tiny_pt, notes):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        result = invoke("run", tiny_pt, "--layout", "notes", "-o", small / "out", env={"NOTES_SIZE": str(1 << 20)})
        free = shutil.disk_usage(small).free / 1e6
        assert result.exit_code == 2 and result.stderr.splitlines()[-1] == (
            f"Error: no space left on device writing {small / 'out'}: this run needs about 76 MB and {free:.0f} MB are free "
            f"in {small / 'out'}; free some space or choose another --output (nothing was written)"), result.output
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", small], check=True)


def test_a_full_disk_met_while_copying_a_package_is_recognised():
    copy_error = shutil.Error([("a/weight.bin", "out/weight.bin", "[Errno 28] No space left on device")])
    assert full_device(copy_error) == "out/weight.bin"
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "out/model.mlmodel")
    assert full_device(wrapped) == "out/model.mlmodel" and full_device(OSError(errno.ENOSPC, "full")) == ""
    assert full_device(OSError(errno.EACCES, "denied")) is None


def test_the_python_api_keeps_libraries_quiet(capsys, caplog):
    """coremltools logs its torch-version warning and "Failed to load _MLModelProxy" at import, and draws tqdm bars."""
    import logging

    from tqdm import tqdm

    from wconv.console import libraries_quiet

    caplog.set_level(logging.WARNING, logger="coremltools")  # as in a fresh process: the CLI tests of this session quiet it for good
    with libraries_quiet():
        list(tqdm(range(3), desc="bar", file=sys.stderr))
        logging.getLogger("coremltools.models.model").warning("Failed to load _MLModelProxy")
    assert "bar" not in capsys.readouterr().err and "_MLModelProxy" not in caplog.text
    list(tqdm(range(3), desc="bar", file=sys.stderr))
    logging.getLogger("coremltools.models.model").warning("Failed to load _MLModelProxy")
    assert "bar" in capsys.readouterr().err and "_MLModelProxy" in caplog.text  # undone afterwards
