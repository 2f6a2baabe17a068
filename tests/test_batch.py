"""`wconv batch` (one process per job, resume, isolated failures) and the Python API `wconv.convert`."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import wconv
from wconv.api import build_job
from wconv.tools.batch import CHECKSUM_CACHE, StageForwarder, exit_reason
from wconv.cli import cli
from wconv.tools.random_checkpoints import write_random_checkpoint

WEIGHTS = "Data/com.apple.CoreML/weights/weight.bin"
# Registered through the manifest's `plugins`; kills the process of the job named "crash" mid-way.
CRASH_PLUGIN = '''
import os

import wconv


@wconv.hookimpl(tryfirst=True)
def wconv_convert(job):
    if job.name == "crash":
        os._exit(3)
'''


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def json_lines(result) -> dict[int, dict]:
    return {record["job"]: record for record in map(json.loads, result.stdout.splitlines())}


def files_with_mtimes(folder):
    """Bytes and mtime of every file under ``folder`` but the checksum cache (a rerun may add it)."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUM_CACHE}


def files_of(files, name):
    """The entries of ``files`` that belong to model ``name``: its manifest and its encoder."""
    return {path: entry for path, entry in files.items() if path.parts[0] in (f"{name}.manifest.json", f"ggml-{name}-encoder.mlpackage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with two tiny-dims random checkpoints, where the tests write their manifests."""
    root = tmp_path_factory.mktemp("batch")
    write_random_checkpoint(root / "checkpoints" / "a.pt", "tiny", seed=1)
    write_random_checkpoint(root / "checkpoints" / "b.pt", "tiny", seed=2)
    return root


def test_two_jobs_convert_a_missing_file_fails_alone_and_a_rerun_changes_nothing(project):
    manifest = project / "resume.toml"
    jobs = '[[job]]\nmodel = "checkpoints/a.pt"\n[[job]]\nmodel = "checkpoints/b.pt"\n{}[[job]]\nmodel = "checkpoints/missing.pt"\n'
    manifest.write_text('output = "dist"\n[defaults]\nverify = false\n' + jobs.format(""))

    first = invoke("batch", manifest, "--jobs", "2", "--json")
    assert first.exit_code == 1, first.output
    records = json_lines(first)
    assert [records[i]["status"] for i in (1, 2, 3)] == ["done", "done", "failed"]
    assert "checkpoints/missing.pt does not exist" in records[3]["error"]
    assert str(project / "dist" / "ggml-a-encoder.mlpackage") in records[1]["artifacts"]
    assert (project / "dist" / "ggml-b-encoder.mlpackage" / WEIGHTS).is_file()
    assert "missing.pt does not exist" in first.stderr and "wconv batch summary" in first.stderr
    written = files_with_mtimes(project / "dist")

    again = invoke("batch", manifest, "--jobs", "2", "--json")
    assert again.exit_code == 1, again.output
    records = json_lines(again)
    assert [records[i]["status"] for i in (1, 2, 3)] == ["up to date", "up to date", "failed"]
    assert records[2]["manifest"] == str(project / "dist" / "b.manifest.json")
    assert files_with_mtimes(project / "dist") == written

    # A changed option makes job 2 stale: it is redone and replaces its own earlier result, without --force.
    manifest.write_text('output = "dist"\n[defaults]\nverify = false\n' + jobs.format("min_psnr = 30.0\n"))
    changed = invoke("batch", manifest, "--jobs", "2", "--json")
    records = json_lines(changed)
    assert [records[i]["status"] for i in (1, 2)] == ["up to date", "done"], changed.output
    assert json.loads((project / "dist" / "b.manifest.json").read_text())["options"]["min_psnr"] == 30.0
    assert files_of(files_with_mtimes(project / "dist"), "a") == files_of(written, "a")


def test_a_killed_job_leaves_no_partial_artifact_and_the_other_job_finishes(project):
    (project / "crash_plugin.py").write_text(CRASH_PLUGIN)
    manifest = project / "killed.toml"
    manifest.write_text('output = "killed"\n[defaults]\nverify = false\nplugins = ["crash_plugin"]\n'
                        '[[job]]\nmodel = "checkpoints/a.pt"\nname = "crash"\n[[job]]\nmodel = "checkpoints/b.pt"\n')

    result = invoke("batch", manifest, "--jobs", "2", "--json")
    assert result.exit_code == 1, result.output
    records = json_lines(result)
    assert records[1]["status"] == "failed" and records[1]["error"] == "process exited with code 3"
    assert records[2]["status"] == "done"
    written_by_job_2 = {entry["file"] for entry in json.loads((project / "killed" / "b.manifest.json").read_text())["artifacts"]}
    # Nothing else: no artifact of job 1 and no .wconv-staging-* dir left by its process.
    assert {p.name for p in (project / "killed").iterdir()} == written_by_job_2 | {"b.manifest.json"}


def test_python_api_writes_what_wconv_run_writes(project, tmp_path):
    checkpoint = project / "checkpoints" / "a.pt"
    assert invoke("run", checkpoint, "--output", tmp_path / "cli", "--no-verify", "--min-target", "iOS17").exit_code == 0
    stages = []
    result = wconv.convert(checkpoint, output=tmp_path / "api", verify=False, min_target="iOS17", reporter=StageForwarder(stages.append))

    assert {"load", "patch", "trace", "convert", "postprocess", "save"} <= {label.split()[0] for label in stages}
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert tmp_path / "api" / "ggml-a-encoder.mlpackage" in result.paths
    assert result.manifest["artifacts"] == json.loads((tmp_path / "cli" / "a.manifest.json").read_text())["artifacts"]
    weights = "ggml-a-encoder.mlpackage/" + WEIGHTS
    assert (tmp_path / "api" / weights).read_bytes() == (tmp_path / "cli" / weights).read_bytes()


def test_api_options_are_job_fields_or_extra_options():
    job = build_job("a.pt", "openai", "out", name="small-de", audio_lengths=[1500, 3000], ggml_type="q5_0", decoder=None)
    assert (job.name, job.audio_lengths, job.layout, job.ggml_type) == ("small-de", (1500, 3000), "whispercpp", "q5_0")
    with pytest.raises(wconv.InputError, match="unknown option 'colour'"):
        wconv.convert("a.pt", colour="blue")


def test_import_wconv_stays_light():
    code = "import sys, wconv; wconv.convert; print(sorted({'torch', 'coremltools'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() == "[]"


@pytest.mark.parametrize("toml, message", [
    ('[[job]]\nmodel = "a.pt"\n[[job]]\nmodel = "b.pt"\nggml_typ = "q5_0"\n', "job 2: unknown key 'ggml_typ' (did you mean 'ggml_type'?)"),
    ('outptu = "dist"\n[[job]]\nmodel = "a.pt"\n', "batch manifest: unknown key 'outptu' (did you mean 'output'?)"),
    ('[defaults]\nverify = false\n', "lists no jobs"),
    ('[[job]]\nfamily = "hf"\n', "job 1: missing key 'model'"),
    ('[[job]]\nmodel = "a.pt"\n[[job]]\nmodel = "a.pt"\n', "job 2 would write the same artifacts as job 1"),
])
def test_a_bad_manifest_is_one_line_exit_2_before_any_job_runs(tmp_path, toml, message):
    manifest = tmp_path / "batch.toml"
    manifest.write_text(toml)
    result = invoke("batch", manifest)
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("exitcode, reason", [
    (3, "process exited with code 3"),
    (-9, "process killed by SIGKILL (out of memory?)"),
    (-11, "process killed by SIGSEGV"),
])
def test_exit_reasons(exitcode, reason):
    assert exit_reason(exitcode) == reason
