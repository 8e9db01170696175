"""Specs: validation before TensorFlow, error wording with key path and line, round trips and warnings."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blocks.errors import SpecError, SpecTypeError
from blocks.registry import list_blocks
from blocks.spec import DeploymentWarning, Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "blocks" / "specs").glob("*.yaml"))
SPEC_IDS = [path.stem for path in SPECS]

# Bounds on the share of MACs that run in LceBconv2d after conversion, for specs whose
# deployment is known: the thesis model runs nothing binary (DoReFa inputs).
KERNEL_MAC_SHARE = {
    "binaryfacenet_thesis": (0.0, 0.0),
    "binaryfacenet": (0.9, 1.0),
}


def spec_text(body: str, input_shape: str = "[16, 16, 32]") -> str:
    """Return a spec document whose block list is ``body`` (starting on line 4)."""
    return f"name: test\ninput_shape: {input_shape}\nblocks:\n" + textwrap.dedent(body).strip("\n") + "\n"


def where(line: int, path: str) -> str:
    """Return the escaped prefix that a spec error without a source file starts with."""
    return re.escape(f"line {line}, {path}: ")


def randomize_weights(model: Any, seed: int = 0) -> None:
    """Replace every weight, so that BatchNorm and PReLU are not identities.

    At initialisation BatchNorm is an identity, so a binary conv whose +-1 products sum to
    exactly 0 gives an activation of exactly 0, which DoReFa maps to -1 but a tiny positive
    value to +1. The converted thesis model's float ops round differently and flip such signs:
    at initialisation its output differed from Keras by 0.8 of the largest output value, and
    by 4e-7 with random weights.
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.name:
            values = rng.uniform(0.5, 1.5, weight.shape)
        else:
            values = rng.normal(0.0, 0.5, weight.shape)
        weight.assign(values.astype(np.float32))


def load_quietly(path: Path) -> Spec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        return load_spec(path)


# ---------------------------------------------------------------------------------------
# Shipped specs.


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_loads(path: Path) -> None:
    spec = load_quietly(path)
    assert spec.source == str(path)
    assert len(spec.shapes) == len(spec.blocks)


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_load_spec_skips_tensorflow(path: Path) -> None:
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from blocks.spec import load_spec\n"
        f"load_spec({str(path)!r})\n"
        "print('tensorflow' in sys.modules, 'larq' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_round_trip_is_equal(path: Path) -> None:
    spec = load_quietly(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        again = parse_spec(spec.to_yaml())
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()
    assert again.shapes == spec.shapes
    assert again.warnings == spec.warnings


def test_binaryfacenet_warns_only_depthwise() -> None:
    # The deployable spec keeps GFE's 1x1 depthwise convs in float on purpose (0.4 M MACs).
    # Any other deployment warning means a layer meant to be binary runs in float.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = load_spec(ROOT / "blocks" / "specs" / "binaryfacenet.yaml")
    messages = [str(w.message) for w in caught if issubclass(w.category, DeploymentWarning)]

    assert [path for path, _ in spec.warnings] == ["blocks[2].mixing"]
    assert len(messages) == 1
    assert "1-bit depthwise conv runs in float" in messages[0]


def test_thesis_spec_shapes() -> None:
    spec = load_quietly(ROOT / "blocks" / "specs" / "binaryfacenet_thesis.yaml")
    assert spec.shapes == ((56, 56, 64), (56, 56, 64), (14, 14, 64), (1, 1, 128), (1, 1, 128))


def test_thesis_spec_warns_float() -> None:
    with pytest.warns(DeploymentWarning) as record:
        spec = load_spec(ROOT / "blocks" / "specs" / "binaryfacenet_thesis.yaml")
    paths = [path for path, _ in spec.warnings]
    assert paths == [
        "blocks[0].input_quantizer",
        "blocks[1].input_quantizer",
        "blocks[1].mixing",
        "blocks[2].input_quantizer",
        "blocks[2].mixing",
    ]
    assert len(record) == len(paths)


@pytest.mark.slow
@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
@pytest.mark.filterwarnings("ignore::blocks.spec.DeploymentWarning")
def test_shipped_spec_runs_in_lce(path: Path) -> None:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from blocks.build import build_model
    from blocks.convert import audit_flatbuffer, check_allocation, convert_model

    spec = load_spec(path)
    model = build_model(spec, seed=0)
    randomize_weights(model)
    flatbuffer, messages = convert_model(model)
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)
    allocation = check_allocation(flatbuffer)

    image = np.random.default_rng(0).uniform(-1.0, 1.0, (1, *spec.input_shape)).astype(np.float32)
    expected = model(image, training=False).numpy()
    actual = Interpreter(flatbuffer, use_indirect_bgemm=True).predict(image)
    error = np.abs(actual - expected).max() / np.abs(expected).max()

    assert allocation["indirect_bgemm"] is None
    assert actual.shape == expected.shape
    assert error <= 1e-4
    if spec.name in KERNEL_MAC_SHARE:
        low, high = KERNEL_MAC_SHARE[spec.name]
        assert low <= audit.binary_kernel_mac_share <= high


# ---------------------------------------------------------------------------------------
# Errors: each names the key path and the YAML line.


def test_unknown_block() -> None:
    known = ", ".join(list_blocks())
    text = spec_text("- block: conv_unti\n  filters: 32")
    with pytest.raises(SpecError, match=where(4, "blocks[0].block") + re.escape(f"unknown block 'conv_unti'; known blocks: {known}")):
        parse_spec(text)


def test_block_after_output_head() -> None:
    text = spec_text("- {block: conv_unit, filters: 32}\n- {block: output_head, name: out}\n- {block: conv_unit, name: late, filters: 32}")
    with pytest.raises(SpecError, match=where(6, "blocks[2]") + re.escape("block 'late' follows output head 'out'")):
        parse_spec(text)


def test_missing_block_key() -> None:
    text = spec_text("- {block: conv_unit, filters: 32}\n- {filters: 32}")
    with pytest.raises(SpecError, match=where(5, "blocks[1]") + "missing required key 'block' \\(one of: conv_unit, "):
        parse_spec(text)


def test_block_name_not_string() -> None:
    text = spec_text("- block: [conv_unit]\n  filters: 32")
    with pytest.raises(SpecTypeError, match=where(4, "blocks[0].block") + re.escape("must be a block name (a string), got list")):
        parse_spec(text)


def test_unknown_key() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  kernel: 3")
    with pytest.raises(SpecError, match=where(6, "blocks[0].kernel") + "unknown key 'kernel' for block 'conv_unit'; allowed: filters, kernel_size, "):
        parse_spec(text)


def test_unknown_key_in_reduction() -> None:
    text = spec_text("- block: se_reduction_head\n  reduction:\n    - {kernel_size: 3, stride: 2}", "[32, 32, 3]")
    with pytest.raises(SpecError, match=where(6, "blocks[0].reduction[0].stride") + "unknown key; allowed: kernel_size, strides, groups"):
        parse_spec(text)


def test_unknown_top_level_key() -> None:
    text = "name: test\ninput_shape: [8, 8, 3]\nlayers: []\nblocks:\n  - {block: conv_unit, filters: 8}\n"
    with pytest.raises(SpecError, match=where(3, "layers") + "unknown key 'layers'; allowed: name, description, input_shape, blocks"):
        parse_spec(text)


def test_missing_required_param() -> None:
    text = spec_text("- block: gfe\n- block: conv_unit\n  kernel_size: 3")
    with pytest.raises(SpecError, match=where(5, "blocks[1]") + "missing required key 'filters' for block 'conv_unit'"):
        parse_spec(text)


@pytest.mark.parametrize("key", ["name", "input_shape", "blocks"])
def test_missing_top_level_key(key: str) -> None:
    document = {"name": "name: test", "input_shape": "input_shape: [8, 8, 3]", "blocks": "blocks: [{block: gfe}]"}
    del document[key]
    with pytest.raises(SpecError, match=re.escape(f"line 1: missing required key '{key}'")):
        parse_spec("\n".join(document.values()) + "\n")


def test_empty_document() -> None:
    with pytest.raises(SpecError, match="^a spec must be a mapping with keys name, input_shape, blocks$"):
        parse_spec("")


def test_empty_block_list() -> None:
    with pytest.raises(SpecError, match=where(3, "blocks") + "must list at least one block"):
        parse_spec("name: test\ninput_shape: [8, 8, 3]\nblocks: []\n")


@pytest.mark.parametrize("shape", ["[8, 8]", "[8, 0, 3]", "[8, 8, true]", "[8, 8.5, 3]"])
def test_invalid_input_shape(shape: str) -> None:
    text = f"name: test\ninput_shape: {shape}\nblocks:\n  - block: gfe\n"
    with pytest.raises(SpecError, match=where(2, "input_shape") + re.escape("must be [height, width, channels] of positive integers")):
        parse_spec(text)


def test_top_level_wrong_type() -> None:
    with pytest.raises(SpecTypeError, match=where(2, "input_shape") + "must be a list, got str"):
        parse_spec("name: test\ninput_shape: 112x112x3\nblocks:\n  - block: gfe\n")


def test_string_where_int() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  kernel_size: '3'")
    with pytest.raises(SpecTypeError, match=where(6, "blocks[0].kernel_size") + "must be an int, got str '3'"):
        parse_spec(text)


def test_bool_where_int() -> None:
    text = spec_text("- block: conv_unit\n  filters: true")
    with pytest.raises(SpecTypeError, match=where(5, "blocks[0].filters") + "must be an int, got bool True"):
        parse_spec(text)


def test_float_where_int() -> None:
    text = spec_text("- block: lfe\n  repeats: 2.0")
    with pytest.raises(SpecTypeError, match=where(5, "blocks[0].repeats") + "must be an int, got float 2.0"):
        parse_spec(text)


def test_bad_literal() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  padding: full")
    with pytest.raises(SpecTypeError, match=where(6, "blocks[0].padding") + "must be one of 'same', 'valid', got str 'full'"):
        parse_spec(text)


def test_wrong_type_is_type_error() -> None:
    text = spec_text("- block: conv_unit\n  filters: '32'")
    with pytest.raises(TypeError):
        parse_spec(text)


def test_spec_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_spec(spec_text("- block: nope"))


def test_embedding_after_too_much_downsampling() -> None:
    text = spec_text("- block: lfe\n- block: lfe\n  name: lfe2\n- block: embedding", "[8, 8, 32]")
    message = "valid-padded kernel 3x3 is larger than its 2x2 input (block 'embedding', input 2x2x64)"
    with pytest.raises(SpecError, match=where(7, "blocks[2].kernel_size") + re.escape(message)):
        parse_spec(text)


def test_reduction_kernel_larger_than_map() -> None:
    text = spec_text("- block: se_reduction_head\n  filters: 32\n  reduction:\n    - {kernel_size: 5}", "[3, 3, 3]")
    message = "valid-padded kernel 5x5 is larger than its 3x3 input (block 'se_reduction_head', input 3x3x3)"
    with pytest.raises(SpecError, match=where(7, "blocks[0].reduction[0].kernel_size") + re.escape(message)):
        parse_spec(text)


def test_later_reduction_kernel_too_large() -> None:
    # 16x16 -> 6x6 after the first conv, too small for the second 7x7 kernel.
    text = spec_text(
        "- block: se_reduction_head\n  filters: 32\n  reduction:\n    - {kernel_size: 5, strides: 2}\n    - {kernel_size: 7}",
        "[16, 16, 3]",
    )
    with pytest.raises(SpecError, match=where(8, "blocks[0].reduction[1].kernel_size") + re.escape("valid-padded kernel 7x7 is larger than its 6x6 input")):
        parse_spec(text)


def test_groups_not_dividing_channels() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  groups: 3")
    message = "groups=3 must divide the input channels (32) and filters (32) (block 'conv_unit', input 16x16x32)"
    with pytest.raises(SpecError, match=where(6, "blocks[0].groups") + re.escape(message)):
        parse_spec(text)


def test_mixing_groups_not_dividing() -> None:
    text = spec_text("- block: gfe\n  mixing: grouped\n  mixing_groups: 3")
    with pytest.raises(SpecError, match=where(6, "blocks[0].mixing_groups") + re.escape("groups=3 must divide the input channels (32)")):
        parse_spec(text)


def test_entry_groups_not_dividing() -> None:
    # The default reduction's groups (4, 4, 2, 1) divide 48; the entry conv's 5 does not.
    text = spec_text("- block: se_reduction_head\n  filters: 48\n  se_ratio: 16\n  entry_groups: 5", "[32, 32, 3]")
    with pytest.raises(SpecError, match=where(7, "blocks[0].entry_groups") + re.escape("groups=5 must divide the input channels (48)")):
        parse_spec(text)


@pytest.mark.parametrize("bits", [0, 9, 16, 64])
def test_bad_bits(bits: int) -> None:
    text = spec_text(f"- block: conv_unit\n  filters: 32\n  bits: {bits}")
    message = f"must be 1 (binary), 2-8 (DoReFa k-bit) or 32 (float), got {bits}"
    with pytest.raises(SpecError, match=where(6, "blocks[0].bits") + re.escape(message)):
        parse_spec(text)


@pytest.mark.parametrize(
    ("body", "line", "path"),
    [
        ("- block: se_reduction_head\n  bits: 16", 5, "blocks[0].bits"),
        ("- block: se_reduction_head\n  expansion_bits: 16", 5, "blocks[0].expansion_bits"),
        ("- block: gfe\n  mixing: grouped\n  bits: 16", 6, "blocks[0].bits"),
        ("- block: embedding\n  bits: 16", 5, "blocks[0].bits"),
    ],
)
def test_bad_bits_names_block_key(body: str, line: int, path: str) -> None:
    with pytest.raises(SpecError, match=where(line, path) + re.escape("must be 1 (binary), 2-8 (DoReFa k-bit) or 32 (float), got 16")):
        parse_spec(spec_text(body, "[32, 32, 32]"))


@pytest.mark.parametrize("block", ["conv_unit", "se_reduction_head", "lfe", "embedding"])
def test_non_positive_filters(block: str) -> None:
    with pytest.raises(SpecError, match=where(5, "blocks[0].filters") + "must be positive, got 0"):
        parse_spec(spec_text(f"- block: {block}\n  filters: 0", "[32, 32, 32]"))


def test_unknown_quantizer() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  input_quantizer: sign")
    message = "unknown quantizer 'sign'; known: ApproxSign, DoReFa, "
    with pytest.raises(SpecError, match=where(6, "blocks[0].input_quantizer") + re.escape(message)):
        parse_spec(text)


def test_unknown_quantizer_class() -> None:
    text = spec_text("- block: gfe\n  kernel_quantizer: {class_name: Sign}")
    with pytest.raises(SpecError, match=where(5, "blocks[0].kernel_quantizer") + re.escape("unknown quantizer 'Sign'; known: ")):
        parse_spec(text)


def test_quantizer_without_class_name() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  kernel_quantizer: {k_bit: 2}")
    with pytest.raises(SpecError, match=where(6, "blocks[0].kernel_quantizer") + re.escape("a quantizer mapping needs a 'class_name' key")):
        parse_spec(text)


def test_unknown_quantizer_at_32_bits() -> None:
    text = spec_text("- block: embedding\n  kernel_size: 2\n  strides: 2\n  input_quantizer: sign", "[8, 8, 32]")
    with pytest.raises(SpecError, match=where(7, "blocks[0].input_quantizer") + re.escape("unknown quantizer 'sign'")):
        parse_spec(text)


def test_duplicate_block_names() -> None:
    text = spec_text("- {block: conv_unit, name: body, filters: 32}\n- {block: conv_unit, name: body, filters: 32}")
    message = "duplicate block name 'body'; give each block a unique 'name'"
    with pytest.raises(SpecError, match=where(5, "blocks[1].name") + re.escape(message)):
        parse_spec(text)


def test_default_names_are_unique() -> None:
    spec = parse_spec(spec_text("- {block: conv_unit, filters: 32}\n- {block: conv_unit, filters: 32}"))
    assert [block.name for block in spec.blocks] == ["conv_unit", "conv_unit_1"]


def test_block_name_not_snake_case() -> None:
    text = spec_text("- {block: conv_unit, name: Body, filters: 32}")
    with pytest.raises(SpecError, match=where(4, "blocks[0].name") + "must be a snake_case identifier, got 'Body'"):
        parse_spec(text)


def test_duplicate_yaml_key() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  filters: 64")
    with pytest.raises(SpecError, match=where(6, "blocks[0].filters") + re.escape("duplicate key 'filters' (first set on line 5)")):
        parse_spec(text)


def test_invalid_yaml() -> None:
    with pytest.raises(SpecError, match=re.escape("line 4: invalid YAML: found character '\\t' that cannot start any token")):
        parse_spec("name: test\ninput_shape: [8, 8, 3]\nblocks:\n\t- block: gfe\n")


def test_invalid_yaml_unclosed() -> None:
    with pytest.raises(SpecError, match="^line 4: invalid YAML: "):
        parse_spec("name: test\ninput_shape: [8, 8, 3]\nblocks: [\n")


def test_error_names_source_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(spec_text("- block: conv_unit\n  filters: 32\n  groups: 3"))
    with pytest.raises(SpecError, match=re.escape(f"{path}:6, blocks[0].groups: ")) as info:
        load_spec(path)
    assert info.value.line == 6
    assert info.value.path == "blocks[0].groups"
    assert info.value.source == str(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(SpecError, match=re.escape(f"{path}: cannot read spec file: No such file or directory")):
        load_spec(path)


def test_errors_raise_before_tensorflow() -> None:
    script = (
        "import sys\n"
        "from blocks.spec import parse_spec\n"
        "from blocks.errors import SpecError\n"
        "try:\n"
        "    parse_spec('name: a\\ninput_shape: [8, 8, 3]\\nblocks:\\n  - {block: conv_unit, filters: 8, groups: 3}\\n')\n"
        "except SpecError:\n"
        "    print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------
# with_params.


# BinaryFaceNet's block sequence at 32x32 with 32 channels per group, free of warnings.
SMALL_FACENET = """\
name: small_facenet
input_shape: [32, 32, 3]
blocks:
  - block: se_reduction_head
    name: head
    reduction:
      - {kernel_size: 5, strides: 2, groups: 2}
      - {kernel_size: 3, strides: 3, groups: 2}
    entry_groups: 2
  - {block: gfe, name: gfe, mixing: grouped}
  - {block: lfe, name: lfe, filters: 64, mixing: grouped}
  - {block: embedding, name: embedding}
  - {block: output_head, name: output}
"""


@pytest.fixture(scope="module")
def small_facenet(tmp_path_factory: pytest.TempPathFactory) -> Spec:
    path = tmp_path_factory.mktemp("specs") / "small_facenet.yaml"
    path.write_text(SMALL_FACENET)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeploymentWarning)
        return load_spec(path)


def test_with_params_changes_one_key(small_facenet: Spec) -> None:
    with pytest.warns(DeploymentWarning, match=re.escape("blocks[2].mixing_groups: 1-bit grouped conv with 16 input channels per group")):
        changed = small_facenet.with_params({"lfe.filters": 32})
    before, after = small_facenet.to_dict(), changed.to_dict()

    assert after["blocks"][2]["filters"] == 32
    after["blocks"][2]["filters"] = 64
    assert after == before
    assert changed.shapes[:2] == small_facenet.shapes[:2]
    assert changed.shapes[2] == (8, 8, 32)
    assert changed.source == small_facenet.source


def test_with_params_sets_default_key(small_facenet: Spec) -> None:
    changed = small_facenet.with_params({"gfe.repeats": 2, "embedding.pad_values": 0.0})
    assert changed.block("gfe").params["repeats"] == 2
    assert changed.block("embedding").params["pad_values"] == 0.0


def test_with_params_nested_path(small_facenet: Spec) -> None:
    changed = small_facenet.with_params({"head.reduction[0].kernel_size": 3})
    assert changed.block("head").params["reduction"][0] == {"kernel_size": 3, "strides": 2, "groups": 2}
    assert small_facenet.block("head").params["reduction"][0]["kernel_size"] == 5


def test_with_params_renames(small_facenet: Spec) -> None:
    assert small_facenet.with_params({}, name="renamed").name == "renamed"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("lfe", "parameter path must be '<block name>.<key>' with a block among: head, gfe, lfe, embedding, output"),
        ("stem.filters", "parameter path must be '<block name>.<key>' with a block among: head, gfe, lfe, embedding, output"),
        ("head.reduction[9].groups", "index 9 is out of range for a list of 2"),
        ("head.reduction[0][1]", "cannot index a dict with [1]"),
        ("head.se.ratio", "key 'se' is not set in the spec"),
        ("lfe.filters.width", "cannot set key 'width' inside an int"),
    ],
)
def test_with_params_bad_path(small_facenet: Spec, path: str, message: str) -> None:
    with pytest.raises(SpecError, match=f"^{re.escape(path)}: {re.escape(message)}$"):
        small_facenet.with_params({path: 1})


def test_with_params_unknown_key(small_facenet: Spec) -> None:
    message = f"{small_facenet.source}, blocks[1].bogus: unknown key 'bogus' for block 'gfe'"
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        small_facenet.with_params({"gfe.bogus": 1})
    assert info.value.line is None
    assert str(info.value).endswith("(after setting gfe.bogus)")


def test_with_params_wrong_type(small_facenet: Spec) -> None:
    with pytest.raises(SpecTypeError, match=re.escape("blocks[2].filters: must be an int, got str '32' (after setting lfe.filters)")):
        small_facenet.with_params({"lfe.filters": "32"})


def test_block_lookup_unknown(small_facenet: Spec) -> None:
    with pytest.raises(KeyError, match=re.escape("spec 'small_facenet' has no block named 'stem'; blocks: head, gfe, lfe")):
        small_facenet.block("stem")


# ---------------------------------------------------------------------------------------
# Deployment warnings: legal settings that LCE will not run as declared.


def test_warns_dorefa_input() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  input_quantizer: {class_name: DoReFa, k_bit: 1, mode: weights}")
    message = "blocks[0].input_quantizer: 1-bit layer with input quantizer 'DoReFa' runs in float"
    with pytest.warns(DeploymentWarning, match=re.escape(message)):
        spec = parse_spec(text)
    assert spec.warnings[0][0] == "blocks[0].input_quantizer"


def test_warns_heaviside_input() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  input_quantizer: ste_heaviside")
    with pytest.warns(DeploymentWarning, match=re.escape("input quantizer 'ste_heaviside' runs in float")):
        parse_spec(text)


def test_warns_depthwise_mixing() -> None:
    message = "blocks[0].mixing: 1-bit depthwise conv runs in float in LCE (quantize, dequantize, float conv); use mixing: grouped"
    with pytest.warns(DeploymentWarning, match=re.escape(message)):
        parse_spec(spec_text("- block: gfe"))


def test_warns_separable_mixing() -> None:
    message = "blocks[0].mixing: 1-bit separable conv runs in float in LCE"
    with pytest.warns(DeploymentWarning, match=re.escape(message)):
        parse_spec(spec_text("- block: lfe\n  filters: 32"))


def test_warns_grouped_16_channels() -> None:
    text = spec_text("- block: conv_unit\n  filters: 32\n  groups: 2")
    message = "blocks[0].groups: 1-bit grouped conv with 16 input channels per group runs in float: LCE needs a multiple of 32"
    with pytest.warns(DeploymentWarning, match=re.escape(message)):
        parse_spec(text)


def test_warning_names_block_and_source(tmp_path: Path) -> None:
    path = tmp_path / "grouped.yaml"
    path.write_text(spec_text("- {block: conv_unit, name: body, filters: 32, groups: 2}"))
    with pytest.warns(DeploymentWarning, match=re.escape(f"{path}: blocks[0].groups: ")) as record:
        load_spec(path)
    assert str(record[0].message).endswith("(block 'body')")


@pytest.mark.parametrize(
    ("body", "input_shape"),
    [
        ("- {block: conv_unit, filters: 64, groups: 2}", "[16, 16, 64]"),
        ("- {block: conv_unit, filters: 32, groups: 2, bits: 32}", "[16, 16, 32]"),
        ("- {block: conv_unit, filters: 32, groups: 2, bits: 4}", "[16, 16, 32]"),
        ("- {block: gfe, mixing: grouped, mixing_groups: 2}", "[16, 16, 64]"),
        ("- {block: gfe, bits: 32}", "[16, 16, 32]"),
        ("- {block: conv_unit, filters: 32, input_quantizer: approx_sign, kernel_quantizer: magnitude_aware_sign}", "[16, 16, 32]"),
    ],
)
def test_no_warning_for_binary_kernels(body: str, input_shape: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeploymentWarning)
        spec = parse_spec(spec_text(body, input_shape))
    assert spec.warnings == ()


def test_warnings_take_no_part_in_equality() -> None:
    text = spec_text("- {block: conv_unit, filters: 32, groups: 2}")
    with pytest.warns(DeploymentWarning):
        first = parse_spec(text)
    with pytest.warns(DeploymentWarning):
        second = parse_spec(text, source="elsewhere.yaml")
    assert first == second
