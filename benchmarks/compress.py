"""Core ML compression (`--compress`): weight size, accuracy and time of each spec against fp16, same run.

    python benchmarks/compress.py [--specs int8 palette6 palette4 mixed:4 mixed:3] [--skip-large]

Real Whisper base weights (the CTranslate2 sample): the encoder and the stateful decoder are converted
once to fp16 (``--layout coreml``), the baseline row; every spec then compresses both packages with
``compress_saved`` (what ``wconv compress`` runs), which also verifies the compressed and the fp16
packages against PyTorch fp32 with wconv's evaluator. MB are the packages' weight files (1 MB = 1e6
bytes). PSNR is that verification, read from the manifest's side-by-side record: the encoder output
on the bundled speech clip and the decoder logits. Token error rate: edit distance between the greedy
tokens of the Core ML encoder + stateful decoder (wconv's evaluator) and openai-whisper fp32's
(``whisper.decode``) over tests/data/clip*.wav, divided by fp32's token count. Time is the whole
``compress_saved`` call: compressing both packages (mixed:BITS includes its per-layer search), saving,
and verifying both compressed and both fp16 packages; the verification share is shown beside it.

large-v3, random weights with the real dimensions, sizes only (``--skip-large`` skips it): converted
in a child process (``min_target="iOS18"`` so that int4 applies) with a time limit, then each spec
compresses both packages without verification. int8 and int4 are wconv's own ``compress``; paletteN
uses a uniform LUT (coremltools ``mode="uniform"``) over the same weights and widths instead of
k-means, which takes hours on large-v3 with sklearn. A per-tensor LUT of N bits stores the same bytes
whatever its entries: the run checks this on base (k-means vs uniform, same width, both packages).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_SPECS = ["int8", "palette6", "palette4", "mixed:4", "mixed:3"]
LARGE_SPECS = ["int8", "int4", "palette6", "palette4"]
CLIPS = sorted((Path(__file__).resolve().parents[1] / "tests" / "data").glob("clip*.wav"))
LARGE_TIMEOUT = 600  # seconds for the large-v3 checkpoint + conversion child


def packages(folder: Path) -> tuple[Path, Path]:
    """The (encoder, stateful decoder) packages of a ``--layout coreml`` folder."""
    (encoder,), (decoder,) = folder.glob("ggml-*-encoder.mlpackage"), folder.glob("*-decoder-stateful.mlpackage")
    return encoder, decoder


def mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def markdown(title: str, header: list[str], rows: list[list[str]], note: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", note, ""])


class StageTimes:
    """A reporter for ``compress_saved`` that adds up seconds per stage (compress, save, verify)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, label: str, call, **kwargs):
        started = time.perf_counter()
        result = call(**kwargs)
        stage = label.split()[0]
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        print(f"  {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        return result


def fp32_tokens(model) -> dict[Path, list[int]]:
    """openai-whisper fp32's greedy tokens (English, no timestamps) for each clip."""
    import torch
    import whisper

    from wconv.runtime.audio import read_wav
    from wconv.runtime.reference import whisper_model

    reference = whisper_model(model.dims, model.state_dict, model.alignment_heads)
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    with torch.no_grad():
        return {clip: whisper.decode(reference, whisper.log_mel_spectrogram(whisper.pad_or_trim(read_wav(clip))), options).tokens
                for clip in CLIPS}


def token_error_rate(folder: Path, reference: dict[Path, list[int]]) -> float:
    """Token error rate of the folder's Core ML encoder + stateful decoder against ``reference``."""
    from whisper.model import ModelDimensions

    from wconv.job import ArtifactKind
    from wconv.manifest import read_manifest
    from wconv.runtime.decoding import transcribe_tokens
    from wconv.tools.transcribe import encode
    from wconv.verify.metrics import edit_distance

    manifest = read_manifest(folder)
    dims = ModelDimensions(**manifest["dims"])
    errors = 0
    for clip, expected in reference.items():
        features, _ = encode(manifest, clip)
        tokens = transcribe_tokens(features, packages(folder)[1], ArtifactKind.DECODER_STATEFUL, dims, manifest["multilingual"])
        errors += edit_distance(tokens, expected)
    return errors / sum(len(tokens) for tokens in reference.values())


def uniform_palettize(package: Path, bits: int):
    """The package with wconv's compressible weights palettized to a uniform LUT of ``bits`` bits (the token
    embedding at 8 bits, as wconv's paletteN keeps it): same weights and widths as k-means paletteN."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from wconv.compress.apply import EMBEDDING_MIN_BITS, compressible_weights, embedding_tables, mil_program

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    program = mil_program(mlmodel)
    embeddings = embedding_tables(program)
    configs = {name: cto.OpPalettizerConfig(mode="uniform", nbits=max(bits, EMBEDDING_MIN_BITS) if name in embeddings else bits,
                                            weight_threshold=0)
               for name in compressible_weights(program)}
    return cto.palettize_weights(mlmodel, config=cto.OptimizationConfig(global_config=None, op_name_configs=configs))


def compress_sizes(package: Path, spec: str, workdir: Path, uniform: bool = True) -> int:
    """Weight bytes of ``package`` compressed as ``spec`` (paletteN: uniform LUT unless not ``uniform``), saved, not verified."""
    from wconv.compress.apply import compress, weight_bytes

    if uniform and spec.startswith("palette"):
        smaller = uniform_palettize(package, int(spec.removeprefix("palette")))
    else:
        smaller = compress(package, spec)
    path = workdir / f"{spec}-{'uniform' if uniform else 'kmeans'}-{package.name}"
    smaller.save(str(path))
    return weight_bytes(path)


def base_table(specs: list[str], workdir: Path) -> tuple[str, str]:
    import wconv
    from wconv.compress.apply import weight_bytes
    from wconv.tools.compress_saved import compress_saved
    from wconv.tools.sample_weights import sample_model_dir

    started = time.perf_counter()
    converted = wconv.convert(sample_model_dir(), family="ct2", output=workdir / "fp16", layout="coreml", decoder="stateful", verify=False)
    convert_seconds = time.perf_counter() - started
    folder = converted.manifest_path.parent
    encoder, decoder = packages(folder)
    reference = fp32_tokens(converted.model)
    print(f"converted base in {convert_seconds:.1f} s; fp32 tokens: {[len(t) for t in reference.values()]}", file=sys.stderr, flush=True)

    rows, fp16_psnr, kmeans_bytes = [], set(), {}
    for spec in specs:
        print(f"base {spec}", file=sys.stderr, flush=True)
        stages = StageTimes()
        started = time.perf_counter()
        result = compress_saved([encoder, decoder], spec, workdir / spec.replace(":", "-"), min_psnr=0, reporter=stages)
        seconds = time.perf_counter() - started
        records = {entry["file"]: entry["compression"] for entry in result.manifest["artifacts"] if "compression" in entry}
        enc, dec = records[encoder.name], records[decoder.name]
        fp16_psnr.add((enc["checks"][0]["uncompressed_psnr"], dec["checks"][0]["uncompressed_psnr"]))
        rate = token_error_rate(result.manifest_path.parent, reference)
        rows.append([spec, mb(enc["weight_bytes"]), mb(dec["weight_bytes"]), f"{enc['checks'][0]['psnr']:.1f}",
                     f"{dec['checks'][0]['psnr']:.1f}", f"{rate:.3f}", f"{seconds:.0f} ({stages.seconds.get('verify', 0):.0f})"])
        if spec.startswith("palette"):
            kmeans_bytes[spec] = (enc["weight_bytes"], dec["weight_bytes"])

    (enc_psnr, dec_psnr), *others = sorted(fp16_psnr)
    fp16 = ["fp16 (baseline)", mb(weight_bytes(encoder)), mb(weight_bytes(decoder)), f"{enc_psnr:.1f}", f"{dec_psnr:.1f}",
            f"{token_error_rate(folder, reference):.3f}", "—"]
    if "palette4" not in kmeans_bytes:
        kmeans_bytes["palette4"] = (compress_sizes(encoder, "palette4", workdir, uniform=False), None)
    checks = []
    for spec, (enc_bytes, dec_bytes) in kmeans_bytes.items():
        for what, package, kmeans in (("encoder", encoder, enc_bytes), ("decoder", decoder, dec_bytes)):
            if kmeans is not None:
                uniform = compress_sizes(package, spec, workdir)
                checks.append(f"{spec} {what} k-means {kmeans:,} B, uniform {uniform:,} B ({'equal' if uniform == kmeans else 'DIFFERENT'})")
    note = (f"Whisper base, real weights; fp16 converted once in this run ({convert_seconds:.0f} s), each spec compressed from it. "
            "PSNR in dB vs PyTorch fp32 (wconv's evaluator; encoder on the bundled clip, decoder logits); the fp16 row's PSNR is "
            f"re-measured in every spec's run ({'identical in all' if not others else 'varies across'} {len(specs)} runs). "
            f"Token error rate over {len(CLIPS)} clips ({sum(len(t) for t in reference.values())} fp32 tokens) vs openai-whisper fp32, "
            "compressed encoder + compressed stateful decoder; above 1 when the decoder repeats a phrase up to greedy decoding's "
            f"{converted.model.dims.n_text_ctx // 2}-token limit. Time = the whole compress_saved call for both packages: compression "
            "(with the mixed-bit search), saving, and verification of the compressed AND the fp16 packages (verification share in "
            "parentheses). 2 cores shared with a concurrently running test suite: times are noisy.")
    table = markdown("Core ML compression, Whisper base (real weights)",
                     ["spec", "encoder MB", "decoder MB", "encoder PSNR", "decoder logits PSNR", "token error rate", "time s (verify s)"],
                     [fp16] + rows, note)
    return table, "k-means vs uniform LUT weight bytes on base: " + "; ".join(checks)


def convert_large(workdir: str) -> None:
    """Child process: large-v3 random checkpoint -> fp16 Core ML encoder + stateful decoder in ``workdir``/fp16."""
    import wconv
    from wconv.tools.random_checkpoints import write_random_checkpoint

    checkpoint = write_random_checkpoint(Path(workdir) / "large-v3.pt", "large-v3")
    wconv.convert(checkpoint, family="openai", output=Path(workdir) / "fp16", layout="coreml", decoder="stateful",
                  verify=False, min_target="iOS18")
    checkpoint.unlink()


def large_table(specs: list[str], workdir: Path, uniform_check: str) -> str:
    from wconv.compress.apply import weight_bytes

    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, __file__, "--convert-large", str(workdir)], check=True, timeout=LARGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"large-v3: checkpoint + conversion did not finish within {LARGE_TIMEOUT} s here; no sizes.\n"
    convert_seconds = time.perf_counter() - started
    encoder, decoder = packages(workdir / "fp16")
    fp16 = weight_bytes(encoder), weight_bytes(decoder)
    rows = [["fp16 (baseline)", mb(fp16[0]), mb(fp16[1]), "1.000", "1.000"]]
    for spec in specs:
        print(f"large-v3 {spec}", file=sys.stderr, flush=True)
        sizes = compress_sizes(encoder, spec, workdir), compress_sizes(decoder, spec, workdir)
        rows.append([spec + (" (uniform LUT)" if spec.startswith("palette") else ""), mb(sizes[0]), mb(sizes[1]),
                     f"{sizes[0] / fp16[0]:.3f}", f"{sizes[1] / fp16[1]:.3f}"])
    note = (f"large-v3 with random weights (real dimensions), converted in this run ({convert_seconds:.0f} s with the random "
            "checkpoint, min target iOS18), not verified. int8 / int4 as `--compress` writes them; paletteN with coremltools' "
            "uniform LUT instead of k-means (k-means takes very long on large-v3 with sklearn): same weights, same widths "
            f"(token embedding at 8 bits), hence the same bytes. {uniform_check}.")
    return markdown("Core ML weight sizes, Whisper large-v3", ["spec", "encoder MB", "decoder MB", "encoder / fp16", "decoder / fp16"],
                    rows, note)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", default=BASE_SPECS, help="specs for the base table")
    parser.add_argument("--large-specs", nargs="+", default=LARGE_SPECS, help="specs for the large-v3 table (int8, int4, paletteN)")
    parser.add_argument("--skip-large", action="store_true", help="skip the large-v3 size table")
    parser.add_argument("--convert-large", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    from wconv.console import quiet_libraries

    quiet_libraries()
    if args.convert_large:
        convert_large(args.convert_large)
        return
    with tempfile.TemporaryDirectory() as workdir:
        table, uniform_check = base_table(args.specs, Path(workdir) / "base")
        print(table + "\n" + uniform_check + "\n", flush=True)
        if not args.skip_large:
            print(large_table(args.large_specs, Path(workdir) / "large-v3", uniform_check), flush=True)


if __name__ == "__main__":
    main()
