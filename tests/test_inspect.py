"""python -m blocks.inspect: JSON and table output, and one error line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocks.inspect import main

# A float stem, a binary conv and a grouped binary conv with 32 channels per group, which
# only LCE's indirect BGEMM kernels allocate.
TINY = """
name: tiny
input_shape: [16, 16, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 32, bits: 32}
  - {block: conv_unit, name: body, filters: 64, strides: 2}
  - {block: conv_unit, name: grouped, filters: 64, kernel_size: 1, groups: 2}
"""

STEM_MACS = 16 * 16 * 32 * 3 * 3 * 3
BODY_MACS = 8 * 8 * 64 * 3 * 3 * 32
GROUPED_MACS = 8 * 8 * 64 * 32


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_json_output(tiny_spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main([str(tiny_spec), "--json"])
    data = json.loads(capsys.readouterr().out)

    assert status == 0
    assert data["spec"] == "tiny"
    assert data["source"] == str(tiny_spec)
    assert data["binary_macs"] == BODY_MACS + GROUPED_MACS
    assert data["float_macs"] == STEM_MACS
    # Per conv unit: kernel, BatchNorm gamma and beta (larq folds the moving statistics), PReLU.
    assert data["params"] == (3 * 3 * 3 * 32 + 2 * 32 + 32) + (3 * 3 * 32 * 64 + 2 * 64 + 64) + (32 * 64 + 2 * 64 + 64)
    assert data["size_bytes"] > 0
    assert data["lce_ops"] == {"CONV_2D": 1, "LceBconv2d": 2, "LceQuantize": 2, "PRELU": 3}
    assert data["n_ops"] == 8
    assert data["binary_kernel_mac_share"] == pytest.approx((BODY_MACS + GROUPED_MACS) / (BODY_MACS + GROUPED_MACS + STEM_MACS))
    assert data["float_fallbacks"] == []
    assert data["allocation"]["indirect_bgemm"] is None
    assert data["allocation"]["default"] is not None
    assert data["deployment_warnings"] == []
    assert [layer["name"] for layer in data["layers"]][:2] == ["image", "stem_conv"]


def test_table_output(tiny_spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main([str(tiny_spec)])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}

    assert status == 0
    assert out.startswith(f"spec tiny ({tiny_spec})")
    assert rows["stem_conv"].rstrip().endswith("float")
    assert rows["body_conv"].rstrip().endswith("LceBconv2d")
    assert rows["grouped_conv"].rstrip().endswith("LceBconv2d")
    assert "18,432" in rows["body_conv"]
    assert "image" not in rows, "layers without weights or MACs are listed"
    assert f"binary MACs           {BODY_MACS + GROUPED_MACS:,}" in out
    assert f"float MACs            {STEM_MACS:,}" in out
    assert "LCE ops               8: CONV_2D 1, LceBconv2d 2, LceQuantize 2, PRELU 3" in out
    assert "declared 1-bit, float 0 layers" in out
    assert "AllocateTensors()     default: fails, indirect_bgemm: ok" in out


def test_table_lists_fallbacks_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "grouped16.yaml"
    path.write_text("name: grouped16\ninput_shape: [8, 8, 32]\nblocks:\n  - {block: conv_unit, name: body, filters: 32, kernel_size: 1, groups: 2}\n")

    status = main([str(path)])
    captured = capsys.readouterr()
    reason = "16 input channels per group: grouped binary convs need a multiple of 32 per group"

    assert status == 0
    assert "declared 1-bit, float 1 layers" in captured.out
    assert f"  body_conv: {reason}" in captured.out
    assert "converter: " in captured.out
    assert captured.err.startswith("warning: blocks[0].groups: 1-bit grouped conv with 16 input channels per group")


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    status = main([str(path)])
    captured = capsys.readouterr()

    assert status == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [f"error: {path}: cannot read spec file: No such file or directory"]


def test_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput_shape: [8, 8, 32]\nblocks:\n  - {block: conv_unit, filters: 32, groups: 3}\n")
    status = main([str(path), "--json"])
    captured = capsys.readouterr()

    assert status == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"error: {path}:4, blocks[0].groups: groups=3 must divide the input channels (32)")


def test_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nblocks: [\n")
    status = main([str(path)])
    lines = capsys.readouterr().err.splitlines()

    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:3: invalid YAML: ")


def test_unloadable_weights(tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    status = main([str(tiny_spec), "--weights", str(weights)])
    lines = capsys.readouterr().err.splitlines()

    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot load weights {weights} into spec 'tiny': ")


def test_missing_spec_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "the following arguments are required: spec" in capsys.readouterr().err


def test_tflite_output(tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from targets.base import is_tflite_flatbuffer

    out = tmp_path / "models" / "tiny.tflite"
    status = main([str(tiny_spec), "--json", "--tflite", str(out)])
    data = json.loads(capsys.readouterr().out)

    assert status == 0
    assert is_tflite_flatbuffer(out.read_bytes())
    assert len(out.read_bytes()) == data["flatbuffer_bytes"]
    assert list(out.parent.iterdir()) == [out]


def test_tflite_output_long_name(tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("a" * 248 + ".tflite")

    status = main([str(tiny_spec), "--tflite", str(out)])

    assert status == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([out.name, "tiny.yaml"])
    assert capsys.readouterr().err.startswith(f"wrote {out} (")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("file/tiny.tflite", "cannot write {tmp}/file/tiny.tflite: {tmp}/file is not a folder"),
        ("folder", "cannot write {tmp}/folder: it is a folder; give a file path inside it"),
        ("tiny.yaml", "cannot write {tmp}/tiny.yaml: it is an input of this command"),
        ("", "invalid --tflite '.': it names no file; give a path such as model.tflite"),
    ],
)
def test_tflite_output_rejected(
    tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    spec_text = tiny_spec.read_text()

    status = main([str(tiny_spec), "--tflite", f"{tmp_path}/{target}" if target else "."])

    assert status == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"
    assert tiny_spec.read_text() == spec_text
