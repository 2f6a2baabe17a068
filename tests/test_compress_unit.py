"""Fast unit tests of wconv.compress on small hand-built ML programs (no Whisper weights)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from wconv.compress import apply, mixed
from wconv.compress.specs import CompressionSpec, parse_spec, read_recipe, recipe_min_target
from wconv.errors import InputError

D, HIDDEN, VOCAB = 64, 256, 96


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical-style weights: two linear layers (fc1 with bias), a tied 'embedding' whose row chunks are conv kernels."""
    rng = np.random.default_rng(seed)
    return {
        "toy.fc1.weight": (rng.standard_normal((HIDDEN, D)) * 0.05).astype(np.float32),
        "toy.fc1.bias": (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32),
        "toy.query.weight": (rng.standard_normal((D, HIDDEN)) * 0.05).astype(np.float32),
        "toy.embedding.weight": (rng.standard_normal((VOCAB, D)) * 0.05).astype(np.float32),
        "toy.ln.weight": np.ones(D, np.float32),
    }


def toy_model(weights: dict, target: str = "iOS16"):
    """x (1, D, 1, 8) -> conv fc1 + bias -> gelu -> conv (query * 0.125, pre-scaled like coremltools folds it)
    -> logits over the embedding in two row chunks: MIL consts that look like a converted Whisper's."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    fc1 = weights["toy.fc1.weight"][:, :, None, None]
    query = (weights["toy.query.weight"] * 0.125)[:, :, None, None]
    chunks = np.split(weights["toy.embedding.weight"], 2)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, D, 1, 8))], opset_version=getattr(ct.target, target))
    def prog(x):
        h = mb.conv(x=x, weight=mb.const(val=fc1, name="fc1_weight"), bias=mb.const(val=weights["toy.fc1.bias"], name="fc1_bias"))
        h = mb.gelu(x=h)
        h = mb.conv(x=h, weight=mb.const(val=query, name="mul_3_weight_0"))
        h = mb.mul(x=h, y=mb.const(val=weights["toy.ln.weight"][None, :, None, None], name="ln_weight"))
        logits = [mb.conv(x=h, weight=mb.const(val=chunk[:, :, None, None], name=f"unsqueeze_{i}")) for i, chunk in enumerate(chunks)]
        return mb.concat(values=logits, axis=1)

    return ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                      minimum_deployment_target=getattr(ct.target, target), skip_model_load=True)


@pytest.fixture(scope="module")
def weights():
    return toy_weights()


@pytest.fixture(scope="module")
def fp16_paths(module_tmp, weights):
    """{target: saved fp16 .mlpackage} for iOS16 and iOS18."""
    folder = module_tmp("compress")
    paths = {}
    for target in ("iOS16", "iOS18"):
        paths[target] = folder / f"toy-{target}.mlpackage"
        toy_model(weights, target).save(str(paths[target]))
    return paths


def evaluate(path, x):
    from wconv.runtime.evaluator import MLProgramEvaluator

    model = MLProgramEvaluator.load(path)
    (name,) = model.output_names
    return model.predict({model.input_names[0]: x})[name].astype(np.float32)


def psnr(reference, actual):
    from wconv.verify.metrics import compare

    return compare(reference, actual)["psnr"]


# --- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, method, bits, group, target", [
    ("int8", "int8", 8, None, "iOS16"),
    ("INT4", "int4", 4, None, "iOS18"),
    ("palette8", "palette", 8, None, "iOS16"),
    ("palette6", "palette", 6, None, "iOS16"),
    ("palette4", "palette", 4, None, "iOS16"),
    ("palette3", "palette", 3, None, "iOS18"),
    ("palette2", "palette", 2, None, "iOS16"),
    ("palette4g16", "palette", 4, 16, "iOS18"),
    ("mixed:4", "mixed", 4.0, None, "iOS16"),
    ("mixed:3.5", "mixed", 3.5, None, "iOS16"),
    ("mixed:1", "mixed", 1.0, None, "iOS16"),
    ("mixed:8", "mixed", 8.0, None, "iOS16"),
])
def test_parse_spec(text, method, bits, group, target):
    spec = parse_spec(text)
    assert isinstance(spec, CompressionSpec)
    assert (spec.method, spec.bits, spec.group_size, spec.min_target) == (method, bits, group, target)
    assert spec.text == text


@pytest.mark.parametrize("text, fragment", [
    ("palette9", "choose int8, int4, palette8|6|4|3|2[gN], mixed:BITS (1-8) or a recipe .json"),
    ("palette5", "choose int8"),
    ("int2", "choose int8"),
    ("", "choose int8"),
    ("palette4g7", "group size 7"),
    ("mixed:0.5", "1 to 8 bits"),
    ("mixed:9", "1 to 8 bits"),
    ("mixed:four", "'four' is not a number"),
    ("missing-recipe.json", "does not exist"),
])
def test_parse_spec_errors_name_the_argument(text, fragment):
    with pytest.raises(InputError) as error:
        parse_spec(text)
    message = str(error.value)
    assert message.startswith(f"--compress '{text}'") and fragment in message and "\n" not in message


def test_recipe_spec_and_min_target(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"layers": {"a": 4, "b": 6}}))
    spec = parse_spec(str(path))
    assert spec.method == "recipe" and spec.recipe_path == path and spec.min_target == "iOS16"
    path.write_text(json.dumps({"layers": {"a": 3, "b": 6}}))
    assert parse_spec(str(path)).min_target == "iOS18"
    assert recipe_min_target({"layers": {"a": 4}, "group_size": 16}) == "iOS18"
    for bad in ({"layers": {"a": 5}}, {"nothing": 1}, {"layers": {"a": 4}, "group_size": 7}):
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match="--compress"):
            read_recipe(path)


# --- apply -------------------------------------------------------------------------------------


def test_compressible_weights_and_names(fp16_paths, weights):
    found = apply.compressible_weights(apply.mil_program(fp16_paths["iOS16"]))
    # the bias (256), the LayerNorm-like scale (feeds a mul) and anything <= 2048 elements stay fp16
    assert set(found) == {"fc1_weight_to_fp16", "mul_3_weight_0_to_fp16", "unsqueeze_0_to_fp16", "unsqueeze_1_to_fp16"}
    assert found["fc1_weight_to_fp16"] == (HIDDEN, D, 1, 1)
    parts = apply.match_weights(fp16_paths["iOS16"], weights)
    assert {name: [p.const for p in ps] for name, ps in parts.items()} == {
        "toy.fc1.weight": ["fc1_weight_to_fp16"], "toy.query.weight": ["mul_3_weight_0_to_fp16"],
        "toy.embedding.weight": ["unsqueeze_0_to_fp16", "unsqueeze_1_to_fp16"]}
    assert parts["toy.query.weight"][0].scale == 0.125
    assert [p.offset for p in parts["toy.embedding.weight"]] == [0, VOCAB // 2 * D]


@pytest.mark.parametrize("text, target, op_type, min_psnr", [
    ("int8", "iOS16", "constexpr_affine_dequantize", 40),
    ("palette8", "iOS16", "constexpr_lut_to_dense", 40),
    ("palette6", "iOS16", "constexpr_lut_to_dense", 30),
    ("palette4", "iOS16", "constexpr_lut_to_dense", 18),
    ("palette2", "iOS16", "constexpr_lut_to_dense", 6),
    ("int4", "iOS18", "constexpr_blockwise_shift_scale", 18),
    ("palette3", "iOS18", "constexpr_lut_to_dense", 12),
    ("palette4g16", "iOS18", "constexpr_lut_to_dense", 18),
])
def test_compressed_package_runs_in_the_evaluator(fp16_paths, tmp_path, text, target, op_type, min_psnr):
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    compressed = apply.compress(fp16_paths[target], text)
    path = tmp_path / f"{text}.mlpackage"
    compressed.save(str(path))
    census = apply.op_census(path)
    assert census.get(op_type) == 4 and apply.is_compressed(path)
    assert apply.weight_bytes(path) < apply.weight_bytes(fp16_paths[target])
    x = np.random.default_rng(1).standard_normal((1, D, 1, 8)).astype(np.float32)
    assert psnr(evaluate(fp16_paths[target], x), evaluate(path, x)) > min_psnr
    with pytest.raises(InputError, match="already compressed"):
        apply.compress(path, "int8")


def test_evaluator_decodes_exactly_what_kmeans_wrote(fp16_paths, tmp_path):
    """The LUT weight the sensitivity search measures is bit-identical to the palettized const the evaluator decodes."""
    from wconv.runtime.evaluator import MLProgramEvaluator

    path = tmp_path / "p4.mlpackage"
    apply.compress(fp16_paths["iOS16"], "palette4").save(str(path))
    program = apply.mil_program(fp16_paths["iOS16"])
    stored = apply._const_values(program, ["fc1_weight_to_fp16"])["fc1_weight_to_fp16"]
    decoded = [v for v in MLProgramEvaluator.load(path)._constants.values()
               if isinstance(v, np.ndarray) and v.shape == stored.shape and v.dtype == np.float16]
    expected = mixed.kmeans_weight(stored, 4)
    assert any(np.array_equal(d.astype(np.float32), expected) for d in decoded)


def test_spec_needing_ios18_is_refused_on_an_ios16_model(fp16_paths):
    with pytest.raises(ValueError, match="iOS18"):
        apply.compress(fp16_paths["iOS16"], "int4")


def test_recipe_applies_per_layer_and_refuses_unknown_layers(fp16_paths, weights, tmp_path):
    recipe = {"toy.fc1.weight": 6, "toy.query.weight": 2, "toy.embedding.weight": None}
    path = tmp_path / "mixed.mlpackage"
    apply.compress(fp16_paths["iOS16"], "mixed:4", {"layers": recipe}, state_dict=weights).save(str(path))
    assert apply.op_census(path).get("constexpr_lut_to_dense") == 2  # the embedding chunks stay fp16
    # a checkpoint weight that this artifact does not hold is skipped; a made-up one is refused
    weights_plus = {**weights, "other.weight": np.zeros((64, 64), np.float32)}
    apply.compress(fp16_paths["iOS16"], "mixed:4", {"layers": {"other.weight": 4, "toy.fc1.weight": 4}}, state_dict=weights_plus)
    with pytest.raises(InputError, match="layer 'toy.nope.weight' is not a compressible weight"):
        apply.compress(fp16_paths["iOS16"], "mixed:4", {"layers": {"toy.nope.weight": 4}}, state_dict=weights)
    recipe_file = tmp_path / "r.json"
    recipe_file.write_text(json.dumps({"layers": {"fc1_weight_to_fp16": 4, "made_up_const": 4}}))
    with pytest.raises(InputError, match="made_up_const"):
        apply.compress(fp16_paths["iOS16"], parse_spec(str(recipe_file)))


# --- recipe chooser ----------------------------------------------------------------------------


def synthetic_sensitivities(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    table, sizes = {}, {}
    for i in range(n):
        base = rng.uniform(25, 45)
        table[f"layer{i}"] = {b: base + 6.0 * (b - 2) + rng.uniform(0, 1) for b in (2, 3, 4, 6, 8)}
        sizes[f"layer{i}"] = int(rng.choice([262144, 1048576]))
    return table, sizes


@pytest.mark.parametrize("average", [2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.5, 8.0])
def test_choose_recipe_spends_the_average_where_a_bit_buys_the_most(average):
    table, sizes = synthetic_sensitivities()
    layers, price = mixed.choose_recipe(table, sizes, average)
    assert mixed.average_bits(layers, sizes) <= average + 1e-9
    for name, bits in layers.items():  # no other width costs less at this price
        cost = {b: mixed.noise(v) + price * sizes[name] * b for b, v in table[name].items()}
        assert cost[bits] == min(cost.values())
    # a slightly lower price (more bits) would exceed the budget, unless every layer is at its widest already
    if set(layers.values()) != {8}:
        assert mixed.average_bits(mixed._widths_at(table, sizes, price * 0.999, None), sizes) > average


def test_choose_recipe_beats_a_uniform_width_of_the_same_size():
    table, sizes = synthetic_sensitivities()
    layers, _ = mixed.choose_recipe(table, sizes, 4.0)
    uniform = {name: 4 for name in table}
    assert mixed.predicted_psnr(layers, table) > mixed.predicted_psnr(uniform, table)


def test_choose_recipe_edges():
    table, sizes = synthetic_sensitivities()
    layers, _ = mixed.choose_recipe(table, sizes, 1.0)  # below every candidate: all narrowest
    assert set(layers.values()) == {2}
    layers, _ = mixed.choose_recipe(table, sizes, 8.0)
    assert set(layers.values()) == {8}
    # the widest width unmeasured: any layer may fall back to it
    trimmed = {name: {b: v for b, v in t.items() if b != 8} for name, t in table.items()}
    layers, _ = mixed.choose_recipe(trimmed, sizes, 6.0, bits=(2, 3, 4, 6, 8))
    assert mixed.average_bits(layers, sizes) <= 6.0


def test_make_recipe_is_json_and_round_trips(tmp_path):
    table, sizes = synthetic_sensitivities()
    recipe = mixed.make_recipe(table, sizes, 4.0, candidate_bits=[2, 3, 4, 6, 8], artifact="encoder")
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe, allow_nan=False))
    again = read_recipe(path)
    assert again["layers"] == recipe["layers"] and again["average_bits"] <= 4.0
    assert set(again["sensitivity"]["layer0"]) == {"2", "3", "4", "6", "8"}
    assert recipe_min_target(again) in ("iOS16", "iOS18")


def test_candidate_widths_follow_the_target_whatever_its_platform():
    """3-bit tables need iOS18/macOS15 (spec 9): macOS13 has iOS16's widths, macOS15 iOS18's."""
    assert 3 not in mixed.candidate_bits(4.0, "macOS13") and 3 not in mixed.candidate_bits(4.0, "iOS16")
    assert 3 in mixed.candidate_bits(4.0, "macOS15") and 3 in mixed.candidate_bits(4.0, "iOS18")
