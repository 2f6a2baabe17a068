"""`wconv batch` (one process per job, resume, isolated failures; local and on a real local Ray cluster) and the Python API `wconv.convert`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import wconv
from wconv.api import build_job
from wconv.tools.batch import CHECKSUM_CACHE, StageForwarder, load_batch
from wconv.tools.executors.local import exit_reason
from wconv.cli import cli
from wconv.tools.job_memory import estimate_memory
from wconv.tools.random_checkpoints import random_state_dict, real_dims, write_random_checkpoint

WEIGHTS = "Data/com.apple.CoreML/weights/weight.bin"
# Registered through the manifest's `plugins`; kills the process of the job named "crash" mid-way.
# On Ray, the other job records the resources its task was given.
CRASH_PLUGIN = '''
import json
from pathlib import Path
import os

import wconv


@wconv.hookimpl(tryfirst=True)
def wconv_convert(job):
    if job.name == "crash":
        os._exit(3)
    try:
        import ray
    except ImportError:
        return None
    if ray.is_initialized():
        with open(f"resources-{job.output.name}.json", "w") as file:
            json.dump(ray.get_runtime_context().get_assigned_resources(), file)
'''
EXECUTORS = ["local", "ray"]


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
def project(module_tmp):
    """A folder with two tiny-dims random checkpoints, where the tests write their manifests."""
    root = module_tmp("batch")
    write_random_checkpoint(root / "checkpoints" / "a.pt", "tiny", seed=1)
    write_random_checkpoint(root / "checkpoints" / "b.pt", "tiny", seed=2)
    return root


def use_executor(request, executor: str) -> tuple[str, ...]:
    """The `wconv batch` arguments that choose ``executor``; for Ray, the session's local cluster is up."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    return ("--executor", executor)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_two_jobs_convert_a_missing_file_fails_alone_and_a_rerun_changes_nothing(project, request, executor):
    manifest = project / f"resume-{executor}.toml"
    dist = project / f"dist-{executor}"
    jobs = '[[job]]\nmodel = "checkpoints/a.pt"\n[[job]]\nmodel = "checkpoints/b.pt"\n{}[[job]]\nmodel = "checkpoints/missing.pt"\n'
    manifest.write_text(f'output = "{dist.name}"\n[defaults]\nverify = false\n' + jobs.format(""))
    executor_args = use_executor(request, executor)

    first = invoke("batch", manifest, "--jobs", "2", "--json", *executor_args)
    assert first.exit_code == 1, first.output
    records = json_lines(first)
    assert [records[i]["status"] for i in (1, 2, 3)] == ["done", "done", "failed"]
    assert "checkpoints/missing.pt does not exist" in records[3]["error"]
    assert str(dist / "ggml-a-encoder.mlpackage") in records[1]["artifacts"]
    assert (dist / "ggml-b-encoder.mlpackage" / WEIGHTS).is_file()
    assert "missing.pt does not exist" in first.stderr and "wconv batch summary" in first.stderr
    assert f"executor: {executor}" in first.stderr
    # stderr is no terminal: a line for each job as it ends, before the summary
    assert first.stderr.index("job 3 (checkpoints/missing.pt): failed") < first.stderr.index("wconv batch summary")
    written = files_with_mtimes(dist)

    again = invoke("batch", manifest, "--jobs", "2", "--json", *executor_args)
    assert again.exit_code == 1, again.output
    records = json_lines(again)
    assert [records[i]["status"] for i in (1, 2, 3)] == ["up to date", "up to date", "failed"]
    assert records[2]["manifest"] == str(dist / "b.manifest.json")
    assert files_with_mtimes(dist) == written

    # A changed option makes job 2 stale: it is redone and replaces its own earlier result, without --force.
    manifest.write_text(f'output = "{dist.name}"\n[defaults]\nverify = false\n' + jobs.format("min_psnr = 30.0\n"))
    changed = invoke("batch", manifest, "--jobs", "2", "--json", *executor_args)
    records = json_lines(changed)
    assert [records[i]["status"] for i in (1, 2)] == ["up to date", "done"], changed.output
    assert json.loads((dist / "b.manifest.json").read_text())["options"]["min_psnr"] == 30.0
    assert files_of(files_with_mtimes(dist), "a") == files_of(written, "a")


@pytest.mark.parametrize("executor, reason", [
    ("local", "process exited with code 3"),
    ("ray", "Ray worker died: WorkerCrashedError: The worker died unexpectedly while executing this task"),
])
def test_a_killed_job_leaves_no_partial_artifact_and_the_other_job_finishes(project, request, executor, reason):
    (project / "crash_plugin.py").write_text(CRASH_PLUGIN)
    manifest = project / f"killed-{executor}.toml"
    output = project / f"killed-{executor}"
    manifest.write_text(f'output = "{output.name}"\n[defaults]\nverify = false\nplugins = ["crash_plugin"]\n'
                        '[[job]]\nmodel = "checkpoints/a.pt"\nname = "crash"\n[[job]]\nmodel = "checkpoints/b.pt"\n')

    result = invoke("batch", manifest, "--jobs", "2", "--json", *use_executor(request, executor))
    assert result.exit_code == 1, result.output
    records = json_lines(result)
    assert records[1]["status"] == "failed" and records[1]["error"] == reason
    assert records[2]["status"] == "done"
    written_by_job_2 = {entry["file"] for entry in json.loads((output / "b.manifest.json").read_text())["artifacts"]}
    # Nothing else: no artifact of job 1 and no .wconv-staging-* dir left by its process.
    assert {p.name for p in output.iterdir()} == written_by_job_2 | {"b.manifest.json"}
    if executor == "ray":  # the task asked for the memory the model's dims need, and ran in its own worker process
        assigned = json.loads((project / f"resources-{output.name}.json").read_text())
        assert assigned["memory"] == estimate_memory(build_job(project / "checkpoints" / "b.pt")).bytes


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


def test_every_bad_job_is_named_before_any_job_runs(tmp_path):
    manifest = tmp_path / "batch.toml"
    manifest.write_text('[[job]]\nmodel = "a.pt"\n[[job]]\nmodel = "b.pt"\nggml_type = "q9_0"\n[[job]]\nmodel = "c.pt"\nlayout = "nope"\n'
                        '[[job]]\nmodel = "d.pt"\nfamily = "acme"\n[[job]]\nmodel = "e.pt"\ncompress = "palette9"\n'
                        '[[job]]\nmodel = "f.pt"\nmin_target = "iOS99"\n[[job]]\nmodel = "g.pt"\nlayout = "whisperkit"\ndecoder = "stateful"\n')
    result = invoke("batch", manifest)
    assert result.exit_code == 2
    lines = result.output.removeprefix("Error: ").splitlines()
    assert [line.split(":")[0] for line in lines] == ["job 2", "job 3", "job 4", "job 5", "job 6", "job 7"], result.output
    for line, named in zip(lines, ["ggml type 'q9_0'", "layout 'nope'", "--family 'acme'", "palette9", "min_target 'iOS99'", "--decoder"]):
        assert named in line
    assert not (tmp_path / "models").exists()


def toml_value(value) -> str:
    """A TOML literal for a bool, number, string or list (JSON's forms of these are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def toml_table(header: str, table: dict) -> str:
    return header + "\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())


JUNK = st.one_of(
    st.booleans(), st.integers(-5, 4000), st.floats(-1e3, 1e3, allow_nan=False), st.text(max_size=6),
    st.lists(st.integers(0, 3000), max_size=3), st.lists(st.sampled_from(["", ".relative", "no_such_plugin_x"]), max_size=2))
PLAUSIBLE = {"model": st.sampled_from(["a.pt", "b.pt", "large-v3"]), "name": st.sampled_from(["x", "y"]),
             "output": st.sampled_from(["out", "other"]), "ggml_type": st.sampled_from(["f16", "q5_0", "f32"]),
             "layout": st.sampled_from(["whispercpp", "coreml", "whisperkit", "nope"]), "min_target": st.sampled_from(["iOS16", "iOS18", "iOS99"]),
             "verify": st.booleans(), "min_psnr": st.floats(0, 80), "audio_lengths": st.sampled_from([[1500, 3000], [3000]]),
             "compress": st.sampled_from(["int8", "palette9"]), "family": st.sampled_from(["openai", "acme"]), "colour": JUNK}


def settings_tables(required: tuple[str, ...] = ()):
    """TOML tables of job settings: plausible values, some wrong, some of the wrong type, an unknown key."""
    values = {key: st.one_of(value, value, value, value, JUNK) for key, value in PLAUSIBLE.items()}
    chosen = st.lists(st.sampled_from([key for key in PLAUSIBLE if key not in required]), max_size=3, unique=True)
    return chosen.flatmap(lambda keys: st.fixed_dictionaries({key: values[key] for key in (*required, *keys)}))


@settings(max_examples=40, deadline=None)
@given(defaults=settings_tables(), jobs=st.lists(settings_tables(required=("model",)), min_size=1, max_size=3), executor=st.sampled_from([None, "local", "ray", "ray", "slurm"]))
def test_any_manifest_loads_or_is_one_input_error_per_problem(tmp_path_factory, defaults, jobs, executor):
    manifest = tmp_path_factory.mktemp("fuzz") / "batch.toml"
    text = (f"executor = {toml_value(executor)}\n" if executor else "") + toml_table("[defaults]", defaults)
    manifest.write_text(text + "".join(toml_table("[[job]]", job) for job in jobs))
    try:
        batch = load_batch(manifest)
    except wconv.InputError as e:
        assert str(e) and all(line.startswith(("job ", "[defaults]", str(manifest))) for line in str(e).splitlines()), str(e)
        return
    assert executor in (None, "local", "ray") and batch.executor == executor and len(batch.jobs) == len(jobs)
    for batch_job, settings_of_job in zip(batch.jobs, jobs):
        given_settings = {**defaults, **settings_of_job}
        assert batch_job.job.source == given_settings["model"]
        assert batch_job.job.output == manifest.parent / given_settings.get("output", "models")


@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_is_a_manifest_or_an_input_error(tmp_path_factory, text):
    manifest = tmp_path_factory.mktemp("fuzz") / "batch.toml"
    manifest.write_text(text)
    try:
        load_batch(manifest)
    except wconv.InputError as e:
        assert str(e)


def measured_peaks() -> dict[tuple[str, str], float]:
    """Peak RSS (GiB) of whole `wconv run` processes per (size, layout), as README records benchmarks/batch_memory.py's table."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| model | layout | parameters |"):].split("\n\n")[0]
    return {(cells[0], cells[1]): float(cells[4]) for cells in (row.strip("|").split("|") for row in table.splitlines()[2:])
            for cells in [[cell.strip() for cell in cells]]}


def test_dry_run_prints_the_memory_each_job_needs_from_its_dims(project):
    manifest = project / "dry.toml"
    manifest.write_text('[[job]]\nmodel = "checkpoints/a.pt"\n[[job]]\nmodel = "large-v3"\n[[job]]\nmodel = "someone/whisper-small-de"\nfamily = "hf"\n'
                        '[[job]]\nmodel = "large-v3"\nname = "large-v3-whisperkit"\nlayout = "whisperkit"\n')
    result = invoke("batch", manifest, "--dry-run", "--json", "--executor", "ray")
    assert result.exit_code == 0, result.output
    rows = json_lines(result)
    assert [rows[i]["dims_from"] for i in (1, 2, 3, 4)] == ["checkpoint", "name (large-v3)", "name (small)", "name (large-v3)"]
    assert [rows[i]["action"] for i in (1, 2, 3, 4)] == ["run"] * 4
    assert rows[1]["parameters"] == sum(tensor.numel() for tensor in random_state_dict(real_dims("tiny")).values())
    assert rows[1]["memory_gib"] < rows[3]["memory_gib"] < rows[2]["memory_gib"] < rows[4]["memory_gib"]
    peaks = measured_peaks()
    assert 1 / 1.5 <= rows[2]["memory_gib"] / peaks["large-v3", "whispercpp"] <= 1.5
    assert 1 / 1.5 <= rows[1]["memory_gib"] / peaks["tiny", "whispercpp"] <= 1.5
    assert 1 / 1.5 <= rows[4]["memory_gib"] / peaks["large-v3", "whisperkit"] <= 1.5
    assert not (project / "models").exists()


def test_an_address_where_no_cluster_answers_is_one_line_exit_2(project):
    pytest.importorskip("ray", reason='the Ray executor needs Ray: pip install -e ".[ray]"')
    manifest = project / "nowhere.toml"
    manifest.write_text('output = "nowhere"\n[[job]]\nmodel = "checkpoints/a.pt"\n')
    # in a process of its own: this one may have joined the session's cluster, which the executor would use
    result = subprocess.run([Path(sys.executable).with_name("wconv"), "batch", manifest, "--executor", "ray", "--address", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: no Ray cluster answers at 127.0.0.1:1 (--address or RAY_ADDRESS)"), result.stderr
    assert not (project / "nowhere").exists()
