"""The pluggy host: built-ins as ordinary plugins, stage overrides, validation, `wconv plugins`."""

import json
import types

import pluggy
import pytest
from click.testing import CliRunner

import wconv
from wconv import pipeline
from wconv.cli import cli
from wconv.errors import StageError
from wconv.manager import family_names, get_plugin_manager, resolve_family
from wconv.tools.random_checkpoints import write_random_checkpoint


@pytest.fixture
def pm():
    return get_plugin_manager(entrypoints=False)


def test_builtin_families_and_core_defaults_are_registered(pm):
    assert family_names(pm) == ["ct2", "distil", "hf", "openai"]
    trylast = {}
    for name in ("wconv.conversion", "wconv.compression", "wconv.verification"):
        defaults = pm.get_plugin(name)
        trylast[name] = {caller.name for caller in pm.get_hookcallers(defaults) for impl in caller.get_hookimpls()
                         if impl.plugin is defaults and impl.trylast}
    assert trylast == {"wconv.conversion": {"wconv_trace", "wconv_convert", "wconv_postprocess"},
                       "wconv.compression": {"wconv_compress"}, "wconv.verification": {"wconv_verify"}}


def test_aliases_resolve_to_families(pm):
    assert resolve_family(pm, "openai-whisper") == "openai"
    with pytest.raises(wconv.InputError, match="unknown --family 'nope'"):
        resolve_family(pm, "nope")


def test_misspelled_hook_is_an_error_at_check_pending():
    misspelled = types.ModuleType("misspelled")
    misspelled.wconv_patchh = wconv.hookimpl(lambda model: None)
    with pytest.raises(pluggy.PluginValidationError, match="wconv_patchh"):
        get_plugin_manager(entrypoints=False, extra=[misspelled])


def test_a_test_plugin_overrides_one_stage_and_the_rest_are_defaults(pm, tmp_path):
    """A non-family plugin sees convert first (tryfirst) and declines; it also edits postprocess."""
    calls = []

    class ConvertSpy:
        @wconv.hookimpl(tryfirst=True)
        def wconv_convert(self, traced, artifact, job):
            calls.append(artifact.kind)
            return None  # decline: the core default converts

        @wconv.hookimpl
        def wconv_postprocess(self, mlmodel):
            mlmodel.user_defined_metadata["spy"] = "was here"

    pm.register(ConvertSpy(), "spy")
    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt", "tiny")
    result = pipeline.run(wconv.Job(source=str(checkpoint), output=tmp_path / "out", verify=False), pm)
    assert calls == ["encoder"]
    import coremltools as ct

    saved = ct.models.MLModel(str(result.paths[0]), skip_model_load=True)
    assert saved.user_defined_metadata["spy"] == "was here"


def test_a_failing_plugin_is_named_with_its_stage(pm, tmp_path):
    class Broken:
        @wconv.hookimpl(tryfirst=True)
        def wconv_trace(self, model):
            raise RuntimeError("boom")

    pm.register(Broken(), "broken")
    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt", "tiny")
    with pytest.raises(StageError, match=r"stage 'trace' failed in plugin .*broken.*boom"):
        pipeline.run(wconv.Job(source=str(checkpoint), output=tmp_path / "out", verify=False), pm)
    assert not (tmp_path / "out").exists()


def test_a_third_party_family_claims_its_sources(pm, tmp_path):
    class AcmeFamily:
        @wconv.hookimpl
        def wconv_load(self, job):
            if job.source != "acme/tiny":
                return None
            from wconv.tools.random_checkpoints import random_state_dict, real_dims

            dims = real_dims("tiny")
            return wconv.LoadedModel(family="acme", name="acme-tiny", dims=dims, state_dict=random_state_dict(dims),
                                     source=job.source, source_sha256="0" * 64)

    pm.register(AcmeFamily(), "acme")
    assert "acme" in family_names(pm)
    result = pipeline.run(wconv.Job(source="acme/tiny", output=tmp_path, verify=False), pm)
    assert result.paths[0].name == "ggml-acme-tiny-encoder.mlpackage"
    assert result.manifest["family"] == "acme"


def test_plugins_command_lists_builtins_with_hooks():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["openai"]["family"] is True
    assert "wconv_load" in rows["openai"]["hooks"]
    assert not any(name.startswith("wconv.") for name in rows)


def test_families_command_lists_known_models():
    result = CliRunner().invoke(cli, ["families", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert "large-v3-turbo" in rows["openai"]["known_models"]


def test_the_readme_plugin_example_converts_and_verifies(tmp_path):
    """The third-party family in README.md, run as written: load -> core defaults -> a passing verify."""
    import dataclasses
    import re
    from pathlib import Path

    import torch

    from wconv.tools.random_checkpoints import random_state_dict, real_dims

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    source = re.search(r"```python\n(# wconv_acme.py\n.*?)```", readme, re.S).group(1)
    module = types.ModuleType("wconv_acme")
    exec(compile(source, "wconv_acme.py", "exec"), module.__dict__)

    dims = real_dims("tiny")
    weights = {name.replace("encoder.", "enc.", 1).replace("decoder.", "dec.", 1): w for name, w in random_state_dict(dims).items()}
    torch.save({"dims": dataclasses.asdict(dims), "weights": weights}, tmp_path / "my-model.acme")

    pm = get_plugin_manager(entrypoints=False)
    pm.register(module, "acme")
    result = pipeline.run(wconv.Job(source=str(tmp_path / "my-model.acme"), output=tmp_path / "out", layout="coreml"), pm)
    assert result.paths[0].name == "ggml-my-model-encoder.mlpackage"
    assert result.manifest["family"] == "acme" and result.passed and result.checks[0].metrics["psnr"] >= 50


def test_a_family_reporting_a_wrong_name_is_refused(pm, tmp_path):
    class Misnamed:
        @wconv.hookimpl
        def wconv_load(self, job):
            from wconv.tools.random_checkpoints import random_state_dict, real_dims

            dims = real_dims("tiny")
            return wconv.LoadedModel(family="other", name="x", dims=dims, state_dict=random_state_dict(dims), source="x", source_sha256="0")

    pm.register(Misnamed(), "misnamed")
    with pytest.raises(StageError, match="'other' is not a registered family"):
        pipeline.run(wconv.Job(source="x", family="misnamed", output=tmp_path / "out"), pm)
    assert not (tmp_path / "out").exists()


class EncoderBundle(wconv.Layout):
    """A throwaway third layout: whisper.cpp's encoder under another name, in a folder, with a note beside it."""

    name = "encoder-bundle"
    description = "the encoder and a note, in <name>-bundle/"

    def folder(self, model, job):
        return f"{model.name}-bundle"

    def plan(self, model, job):
        import dataclasses

        from wconv.layouts.contracts import whispercpp_encoder

        return [dataclasses.replace(whispercpp_encoder(model), filename="Encoder.mlpackage")]

    def write_extra_files(self, model, job, folder):
        (folder / "NOTE.txt").write_text(f"{model.name}: {model.dims.n_audio_state} channels\n")
        return [{"file": "NOTE.txt", "kind": "note"}]


class LayoutPlugin:
    @wconv.hookimpl
    def wconv_register_layouts(self, register):
        register(EncoderBundle())


def test_a_plugin_registers_a_third_layout_and_converts_with_it(pm, tmp_path):
    from wconv.tools.plugins_info import describe_layouts

    pm.register(LayoutPlugin(), "bundle")
    assert {row["name"] for row in describe_layouts(pm)} == {"coreai", "coreml", "encoder-bundle", "whispercpp", "whisperkit"}
    checkpoint = write_random_checkpoint(tmp_path / "tiny.pt", "tiny")
    result = pipeline.run(wconv.Job(source=str(checkpoint), output=tmp_path / "out", layout="encoder-bundle"), pm)
    folder = tmp_path / "out" / "tiny-bundle"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-bundle"]
    assert sorted(p.name for p in folder.iterdir()) == ["Encoder.mlpackage", "NOTE.txt", "tiny.manifest.json"]
    assert result.paths == [folder / "Encoder.mlpackage", folder / "NOTE.txt"]
    assert (folder / "NOTE.txt").read_text() == "tiny: 384 channels\n"
    assert [entry["kind"] for entry in result.manifest["artifacts"]] == ["encoder", "note"]
    assert result.manifest["options"]["layout"] == "encoder-bundle"
    assert result.passed and result.checks[0].metrics["psnr"] >= 50


def test_a_layout_registered_twice_is_refused(pm):
    from wconv.layouts import collect_layouts

    pm.register(LayoutPlugin(), "bundle")
    pm.register(LayoutPlugin(), "bundle-again")
    with pytest.raises(ValueError, match="'encoder-bundle' is registered twice"):
        collect_layouts(pm)


def test_an_unknown_layout_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["run", "tiny", "--layout", "nope", "--output", tmp_path / "out"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "unknown layout 'nope'" in result.output and "whispercpp" in result.output and "wconv layouts" in result.output
    assert not (tmp_path / "out").exists()


def test_layouts_command_lists_the_builtins():
    result = CliRunner().invoke(cli, ["layouts", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == {"coreai", "coreml", "whispercpp", "whisperkit"}
    assert rows["whisperkit"]["module"] == "wconv.layouts.whisperkit"


def test_artifact_kinds_given_as_strings_dispatch_and_unknown_kinds_are_not_verified():
    from wconv.verify.defaults import wconv_verify

    assert wconv.Artifact(kind="decoder-cache-io", filename="x").kind is wconv.ArtifactKind.DECODER_CACHE_IO
    plugin_kind = wconv.Artifact(kind="cross-kv", filename="cross-kv.mlpackage")
    assert wconv_verify(path="cross-kv.mlpackage", model=None, artifact=plugin_kind, job=None) is None
