"""Evaluation CLI and library: Keras and LCE models, protocols, VLR rows and errors."""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import face_pattern
from search.evaluate import (
    EvalData,
    EvaluationError,
    batch_coupled_layers,
    embed,
    embed_keras,
    embed_tflite,
    evaluate_model,
    evaluate_pairs,
    format_report,
    keras_embedder,
    load_embedder,
    main,
    report_to_json,
    tflite_embedder,
)
from search.metrics import fuse_flip, l2_normalize
from test_data import write_mini_lfw

tf = pytest.importorskip("tensorflow")


def tiny_model(input_size: int = 112):  # type: ignore[no-untyped-def]
    inputs = tf.keras.Input((input_size, input_size, 3))
    features = tf.keras.layers.Conv2D(4, 8, strides=8, activation="relu")(inputs)
    features = tf.keras.layers.GlobalAveragePooling2D()(features)
    outputs = tf.keras.layers.Dense(8, use_bias=False)(features)
    return tf.keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as ``.h5`` and as an LCE ``.tflite`` flatbuffer."""
    from larq_compute_engine import convert_keras_model

    folder = tmp_path_factory.mktemp("models")
    model = tiny_model()
    model.save(folder / "tiny.h5")
    (folder / "tiny.tflite").write_bytes(convert_keras_model(model))
    return {"h5": folder / "tiny.h5", "tflite": folder / "tiny.tflite"}


@pytest.fixture
def crops() -> np.ndarray:
    return np.stack([face_pattern(index % 4, index, 112, 112) for index in range(6)])


@pytest.fixture
def aligned_folder(make_face_folder) -> Path:
    return make_face_folder([3] * 6, size=(112, 112))


def test_embed_keras_normalised_and_flip(crops: np.ndarray) -> None:
    model = tiny_model()
    plain = embed_keras(model, crops, flip=False, batch_size=4)
    fused = embed_keras(model, crops, flip=True, batch_size=4)
    normalised = (crops.astype(np.float32) - 127.5) / 128
    raw = model.predict_on_batch(normalised)
    mirrored = model.predict_on_batch(normalised[:, :, ::-1])

    assert plain.shape == (6, 8)
    assert np.allclose(np.linalg.norm(plain, axis=1), 1.0)
    assert np.allclose(plain, l2_normalize(raw), atol=1e-5)
    assert np.allclose(fused, fuse_flip(raw, mirrored), atol=1e-5)


def test_embedder_rejects_wrong_size() -> None:
    embedder = keras_embedder(tiny_model(112))
    with pytest.raises(EvaluationError, match=r"takes \(N, 112, 112, 3\) crops, got \(2, 96, 96, 3\)"):
        embedder(np.zeros((2, 96, 96, 3), dtype=np.uint8))


def test_tflite_matches_keras(model_files: dict[str, Path], crops: np.ndarray) -> None:
    keras_embeddings = embed_keras(tf.keras.models.load_model(model_files["h5"], compile=False), crops)
    lce_embeddings = embed_tflite(model_files["tflite"], crops)
    assert lce_embeddings.shape == keras_embeddings.shape
    assert np.allclose(lce_embeddings, keras_embeddings, atol=1e-4)


def test_load_embedder_formats(model_files: dict[str, Path]) -> None:
    assert load_embedder(model_files["h5"]).input_size == 112
    assert load_embedder(model_files["tflite"]).input_size == 112


def test_evaluate_model_rows_and_vlr_reuse(crops: np.ndarray) -> None:
    calls = []
    embedder = keras_embedder(tiny_model())

    def counting(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return embedder(images)

    pairs = np.array([[0, 4], [1, 5], [2, 3], [0, 1]] * 5)
    labels = np.arange(6) % 4
    issame = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    data = EvalData(images=crops, pairs=pairs, issame=issame, protocol="folder", source="memory", labels=labels)
    report = evaluate_model(counting, data, vlr_sizes=(14,), vlr_mode="probe")

    assert [(row.setting, row.flip) for row in report.rows] == [
        ("full resolution", False),
        ("full resolution", True),
        ("VLR 14 px probe", False),
        ("VLR 14 px probe", True),
    ]
    # Full resolution once plus mirrored, then only the degraded probes plus mirrored.
    n_probes = len(np.unique(pairs[:, 1]))
    assert calls == [6, 6, n_probes, n_probes]
    expected = evaluate_pairs(embedder, crops, pairs, issame, flip=True, vlr_size=14, vlr_mode="probe")
    assert report.rows[3].result.accuracy == pytest.approx(expected.accuracy)
    assert report.rows[3].result.auc == pytest.approx(expected.auc)
    assert report.closed_set is not None


def test_format_report_and_json(crops: np.ndarray) -> None:
    pairs = np.array([[0, 4], [1, 5], [0, 1], [2, 3]] * 3)
    issame = np.array([True, True, False, False] * 3)
    data = EvalData(images=crops, pairs=pairs, issame=issame, protocol="folder", source="memory")
    report = evaluate_model(keras_embedder(tiny_model()), data, flip_modes=(True,))
    table = format_report(report)
    document = report_to_json(report, model="tiny.h5")

    assert "accuracy %" in table
    assert "TAR@FAR=0.01" in table
    assert document["model"] == "tiny.h5"
    assert document["rows"][0]["flip"] is True
    assert set(document["rows"][0]["tar_at_far"]) == {"0.01", "0.001"}
    json.dumps(document, allow_nan=False)


def test_main_folder_protocol(model_files: dict[str, Path], aligned_folder: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "scores.json"
    status = main([
        "--model", str(model_files["h5"]), "--data", str(aligned_folder), "--protocol", "folder",
        "--eval-fraction", "1.0", "--vlr", "7", "14", "--json", str(output), "--quiet",
        "--cache-dir", str(tmp_path / "cache"),
    ])
    printed = capsys.readouterr().out
    document = json.loads(output.read_text())

    assert status == 0
    assert "full resolution" in printed
    assert "VLR 7 px probe" in printed
    assert "closed-set identification" in printed
    assert [row["setting"] for row in document["rows"]] == [
        "full resolution", "full resolution", "VLR 7 px probe", "VLR 7 px probe", "VLR 14 px probe", "VLR 14 px probe",
    ]
    assert document["n_pairs"] == 36
    assert document["alignment"]["n_prealigned"] == 18


def test_main_tflite_no_flip_both_mode(model_files: dict[str, Path], aligned_folder: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status = main([
        "--model", str(model_files["tflite"]), "--data", str(aligned_folder), "--protocol", "folder",
        "--eval-fraction", "1.0", "--no-flip", "--vlr", "28", "--vlr-mode", "both", "--quiet",
    ])
    printed = capsys.readouterr().out
    assert status == 0
    assert "VLR 28 px both" in printed
    assert " yes " not in printed


def write_bin(path: Path, n_pairs: int = 10) -> None:
    images = []
    for index in range(2 * n_pairs):
        buffer = io.BytesIO()
        Image.fromarray(face_pattern(index // 2 if index % 4 < 2 else index, index, 112, 112)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    issame = [pair % 2 == 0 for pair in range(n_pairs)]
    with path.open("wb") as handle:
        pickle.dump((images, issame), handle, protocol=4)


def test_main_bin_protocol(model_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_bin(tmp_path / "tiny.bin")
    status = main(["--model", str(model_files["h5"]), "--data", str(tmp_path / "tiny.bin"), "--protocol", "bin",
                   "--quiet"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "(bin: 10 pairs, 5 genuine, 20 images)" in printed


def test_main_lfw_default_data(model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import search.download

    images = write_mini_lfw(tmp_path)
    requested = []
    monkeypatch.setattr(search.download, "ensure_lfw", lambda **kwargs: requested.append(kwargs) or images)
    status = main(["--model", str(model_files["h5"]), "--align", "none", "--quiet"])
    printed = capsys.readouterr().out

    assert status == 0
    assert len(requested) == 1
    assert "(lfw-view1: 24 pairs, 12 genuine, 36 images)" in printed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "missing.h5", "--data", "."], "error: model file not found: missing.h5"),
        (["--model", "model.onnx"], "error: unknown model format 'model.onnx'; expected one of .h5"),
        (["--model", "{spec}"], "error: .*spec.yaml is a spec; pass --weights"),
        (["--model", "{h5}", "--protocol", "folder", "--quiet"], "error: the folder protocol needs --data"),
        (["--model", "{h5}", "--data", "{tmp}/nowhere", "--protocol", "folder", "--quiet"],
         "error: face folder not found: .*nowhere"),
        (["--model", "{h5}", "--vlr", "0"], r"error: --vlr sizes must be positive pixel counts, got \[0\]"),
        (["--model", "{tflite}", "--weights", "{h5}"], "error: a .tflite flatbuffer contains its weights"),
    ],
)
def test_main_errors(arguments: list[str], message: str, model_files: dict[str, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: placeholder\n")
    values = {"h5": model_files["h5"], "tflite": model_files["tflite"], "spec": spec, "tmp": tmp_path}
    status = main([argument.format(**values) for argument in arguments])
    captured = capsys.readouterr()

    assert status == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert re.search(message, captured.err)


TINY_SPEC = """\
name: tiny
input_shape: [112, 112, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 8, kernel_size: 3, strides: 8, bits: 32}
  - {block: embedding, name: embedding, filters: 16, kernel_size: 2, strides: 2, bits: 32}
  - {block: output_head, name: output, units: 8}
"""


def test_spec_with_weights(tmp_path: Path, aligned_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = pytest.importorskip("blocks.build")
    spec_module = pytest.importorskip("blocks.spec")
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(TINY_SPEC)
    model = build.build_model(spec_module.load_spec(spec_path))
    model.save_weights(tmp_path / "weights.h5")
    crops = np.stack([face_pattern(0, 0, 112, 112), face_pattern(1, 0, 112, 112)])

    embedder = load_embedder(spec_path, weights=tmp_path / "weights.h5")
    assert np.allclose(embed(embedder, crops, flip=False), embed_keras(model, crops, flip=False), atol=1e-5)

    status = main(["--model", str(spec_path), "--weights", str(tmp_path / "weights.h5"), "--data", str(aligned_folder),
                   "--protocol", "folder", "--eval-fraction", "1.0", "--quiet"])
    assert status == 0
    assert "full resolution" in capsys.readouterr().out


def dorefa_model():  # type: ignore[no-untyped-def]
    """A model whose 1-bit input quantizer divides by the maximum over the whole batch."""
    lq = pytest.importorskip("larq")
    inputs = tf.keras.Input((4, 4, 3))
    # The ninth power keeps a near-grey image's values near 1e-18 and a white one's near 1.
    powered = tf.keras.layers.Lambda(lambda t: t**9)(inputs)
    conv = lq.layers.QuantConv2D(
        1, 1, use_bias=False, kernel_initializer="ones", name="qconv",
        input_quantizer=lq.quantizers.DoReFa(k_bit=1, mode="weights"),
    )(powered)
    return tf.keras.Model(inputs, tf.keras.layers.Flatten()(conv), name="dorefa")


def test_keras_embedder_batch_coupled() -> None:
    model = dorefa_model()
    grey = np.full((4, 4, 3), 129, dtype=np.uint8)
    white = np.full((4, 4, 3), 255, dtype=np.uint8)
    crops = np.stack([grey, white])
    normalised = (crops.astype(np.float32) - 127.5) / 128

    embedder = keras_embedder(model, batch_size=2)

    assert batch_coupled_layers(model) == ["qconv"]
    assert embedder.batch_size == 1
    # Alone, the grey image's tiny positive values binarize to +1. Beside the white image, the
    # batch maximum pushes them under float32's resolution around 0.5, so they become -1.
    np.testing.assert_array_equal(model.predict_on_batch(normalised[:1])[0], np.full(16, 3.0))
    np.testing.assert_array_equal(model.predict_on_batch(normalised)[0], np.full(16, -3.0))
    np.testing.assert_array_equal(embedder(crops)[0], np.full(16, 3.0))


def test_keras_embedder_sign_quantizers() -> None:
    assert batch_coupled_layers(tiny_model()) == []
    assert keras_embedder(tiny_model(), batch_size=16).batch_size == 16


def test_tflite_embedder_drops_wrong_xnnpack(caplog: pytest.LogCaptureFixture) -> None:
    from larq_compute_engine import convert_keras_model

    # LCE 0.16's XNNPACK delegate gets this conv wrong: 3x3, stride 4, "same" padding, 112 px.
    inputs = tf.keras.Input((112, 112, 3))
    features = tf.keras.layers.Conv2D(8, 3, strides=4, padding="same", kernel_initializer="glorot_normal")(inputs)
    outputs = tf.keras.layers.Flatten()(tf.keras.layers.AveragePooling2D(7)(features))
    model = tf.keras.Model(inputs, outputs)
    crops = np.stack([face_pattern(identity, 0, 112, 112) for identity in range(3)])

    with caplog.at_level("WARNING", logger="search.evaluate"):
        embedder = tflite_embedder(convert_keras_model(model))
        deployed = embedder(crops)

    assert "running without it" in caplog.text
    assert embedder.options == {"use_indirect_bgemm": True, "use_xnnpack": False, "num_threads": 1}
    np.testing.assert_allclose(deployed, keras_embedder(model)(crops), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"hello this is text\n", "not a TFLite flatbuffer (19 bytes without the TFL3 identifier)"),
        ("truncated", "truncated or corrupt TFLite flatbuffer"),
    ],
)
def test_load_embedder_bad_flatbuffer(tmp_path: Path, content: Any, message: str) -> None:
    from larq_compute_engine import convert_keras_model

    if content == "truncated":
        # LCE's interpreter crashes the process on a truncated flatbuffer instead of raising.
        content = convert_keras_model(tiny_model(16))[:-200]
    path = tmp_path / "model.tflite"
    path.write_bytes(content)

    with pytest.raises(EvaluationError, match=re.escape(f"{path}: LCE interpreter cannot load the flatbuffer: {message}")):
        load_embedder(path)
