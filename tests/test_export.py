"""Export of a trial: bundle files, parity check, idempotency and rejected trials."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import face_pattern
from test_dashboard import make_study

tf = pytest.importorskip("tensorflow")

from blocks.spec import load_spec  # noqa: E402
from search import export  # noqa: E402
from search.dashboard import load_study  # noqa: E402
from search.evaluate import Embedder  # noqa: E402
from search.export import ExportError, main, select_trial, write_bundle  # noqa: E402
from search.study import study_records  # noqa: E402

# A kernel-3 conv with strides 4 comes out of XNNPACK as zeros (TF Lite 2.16, LCE 0.16), so
# the stem's kernel equals its stride. One binary conv unit keeps LCE's embeddings within the
# parity threshold at initialisation; BinaryFaceNet's LFE block does not (mean cosine ~0.99).
EXPORT_SPEC = """\
name: {name}
input_shape: [112, 112, 3]
blocks:
  - {{block: conv_unit, name: stem, filters: 32, kernel_size: 4, strides: 4, bits: 32}}
  - {{block: conv_unit, name: body, filters: {filters}, kernel_size: 3, bits: 1}}
  - {{block: embedding, name: embedding, filters: 32, kernel_size: 2, strides: 2}}
"""
TRIALS = [
    (0, "COMPLETE", 0.8, 4.0, 32, None, None),
    (1, "PRUNED", None, 15.0, 64, "over budget: 15.00 ms > 10 ms", None),
]
BUNDLE_FILES = {
    "tiny_trial0000.yaml",
    "tiny_trial0000.weights.h5",
    "tiny_trial0000.tflite",
    "model_card.md",
    "model_card.json",
    "SHA256SUMS",
}


@pytest.fixture(scope="module")
def search_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with one trained trial whose weights are freshly initialised, and one pruned."""
    from blocks.build import build_model

    out = tmp_path_factory.mktemp("search")
    make_study(out, TRIALS, weights=True, spec=EXPORT_SPEC)
    model = build_model(load_spec(out / "specs" / "tiny_trial0000.yaml"), seed=0)
    (out / "models").mkdir()
    model.save_weights(str(out / "models" / "tiny_trial0000.weights.h5"))
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight identities of four 112x112 crops each."""
    root = tmp_path_factory.mktemp("faces")
    for identity in range(8):
        folder = root / f"id{identity}"
        folder.mkdir()
        for index in range(4):
            Image.fromarray(face_pattern(identity, index, 112, 112)).save(folder / f"{index}.png")
    return root


def export_args(search_out: Path, faces: Path, destination: Path, *extra: str) -> list[str]:
    return [
        "--out", str(search_out), "--to", str(destination), "--data", str(faces), "--align", "none",
        "--cache-dir", str(destination.parent / "cache"), "--quiet", *extra,
    ]


@pytest.fixture(scope="module")
def bundle(search_out: Path, faces: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Trial 0 exported once through the CLI; returns the folder and the printed output."""
    destination = tmp_path_factory.mktemp("exports") / "tiny"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(export_args(search_out, faces, destination, "--trial", "0"))
    assert code == 0
    return destination, output.getvalue()


def read_card(destination: Path) -> dict[str, Any]:
    return json.loads((destination / "model_card.json").read_text(encoding="utf-8"))


def test_bundle_files_and_checksums(bundle: tuple[Path, str]) -> None:
    destination, output = bundle
    sums = dict(reversed(line.split("  ")) for line in (destination / "SHA256SUMS").read_text().splitlines())

    assert {path.name for path in destination.iterdir()} == BUNDLE_FILES
    assert set(sums) == BUNDLE_FILES - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((destination / name).read_bytes()).hexdigest() == digest, name
    assert output.startswith(f"trial 0: created {destination} (parity: mean cosine ")


def test_bundle_rebuilds_the_trial(bundle: tuple[Path, str], search_out: Path) -> None:
    destination, _ = bundle

    assert load_spec(destination / "tiny_trial0000.yaml") == load_spec(search_out / "specs" / "tiny_trial0000.yaml")
    assert (destination / "tiny_trial0000.weights.h5").read_bytes() == (search_out / "models" / "tiny_trial0000.weights.h5").read_bytes()
    assert (destination / "tiny_trial0000.tflite").read_bytes()[4:8] == b"TFL3"
    assert not list(destination.parent.glob(".tiny.*"))


def test_model_card_contents(bundle: tuple[Path, str], faces: Path) -> None:
    destination, _ = bundle
    card = read_card(destination)
    markdown = (destination / "model_card.md").read_text(encoding="utf-8")

    assert card["trial"] == 0
    assert card["parity"]["mean_cosine"] >= 0.999
    assert card["parity"]["images"] == card["data"]["evaluation_images"]
    # Parity runs with the measurement's options. use_indirect_bgemm, which the measurement did
    # not record, keeps its default.
    assert "use_indirect_bgemm" not in card["latency"]["options"]
    assert card["parity"]["interpreter"] == {"use_indirect_bgemm": True, "use_xnnpack": True, "num_threads": 1}
    assert card["data"]["folder"] == str(faces)
    assert card["data"]["protocol"] == "identity-split"
    assert card["accuracy"]["verification_accuracy"] == 0.8
    assert card["latency"]["median_ms"] == 4.0
    assert card["latency"]["target"] == {"kind": "local", "name": "local"}
    assert card["macs"]["binary"] == 1_200_000
    assert 0 < card["macs"]["binary_kernel_share"] < 1
    assert card["parameters"] == 10_000
    assert card["lce"]["op_counts"]["LceBconv2d"] == 1
    assert set(card["files"]) == {"tiny_trial0000.yaml", "tiny_trial0000.weights.h5", "tiny_trial0000.tflite"}
    assert "--trial 0 --to" in card["reproduce"]["export"]
    assert "--protocol folder" in card["reproduce"]["evaluate"]
    for heading in ("## Data and protocol", "## Accuracy", "## Latency", "## Cost", "## Parity", "## Files", "## Reproduce"):
        assert heading in markdown
    assert card["files"]["tiny_trial0000.tflite"]["sha256"] in markdown


@pytest.mark.slow
def test_export_again_is_unchanged(bundle: tuple[Path, str], search_out: Path, faces: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    destination, first_output = bundle
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in destination.iterdir()}
    code = main(export_args(search_out, faces, destination, "--trial", "0"))
    output = capsys.readouterr().out
    after = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in destination.iterdir()}

    assert code == 0
    assert output.startswith(f"trial 0: unchanged {destination}")
    assert output.splitlines()[1:] == first_output.splitlines()[1:]
    assert after == before


def test_parity_failure_rejects_export(search_out: Path, faces: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)

    def unrelated_embedder(flatbuffer: bytes, **_: Any) -> Embedder:
        return Embedder(lambda batch: rng.normal(size=(len(batch), 32)), input_size=112, batch_size=8,
                        description="the flatbuffer")

    monkeypatch.setattr(export, "tflite_embedder", unrelated_embedder)
    destination = tmp_path / "rejected"
    code = main(export_args(search_out, faces, destination, "--trial", "0"))
    error = capsys.readouterr().err.strip().splitlines()

    assert code == 2
    assert len(error) == 1
    assert re.fullmatch(
        r"error: LCE and Keras embeddings differ: mean cosine -?0\.\d{6} over \d+ face crops is below 0\.999 "
        r"\(minimum -?\d\.\d{6}\); nothing was exported",
        error[0],
    )
    assert not destination.exists()
    assert not list(tmp_path.glob(".rejected.*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trial", "99"], "error: trial 99 is not a finished trial of study 'tiny' (trial numbers: 0 to 1); trials with weights: 0"),
        (["--trial", "1"], "error: trial 1 has no trained weights (PRUNED: over budget: 15.00 ms > 10 ms); trials with weights: 0"),
        (["--trial", "-1"], "error: --trial must be a trial number (0 or more), got -1"),
    ],
)
def test_rejected_trials(extra: list[str], message: str, search_out: Path, faces: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(export_args(search_out, faces, tmp_path / "bundle", *extra))
    error = capsys.readouterr().err

    assert code == 2
    assert message in error
    assert not (tmp_path / "bundle").exists()


def test_missing_data_rejected(search_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--out", str(search_out), "--trial", "0", "--to", str(tmp_path / "bundle")])

    assert code == 2
    assert "error: the study does not record its face folder; pass --data with the folder the search used" in capsys.readouterr().err


def test_missing_weights_file_rejected(tmp_path: Path, faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search"
    make_study(out, TRIALS[:1], weights=True, spec=EXPORT_SPEC)
    code = main(export_args(out, faces, tmp_path / "bundle", "--trial", "0"))

    assert code == 2
    assert f"error: weights file of trial 0 not found: {out / 'models' / 'tiny_trial0000.weights.h5'}" in capsys.readouterr().err


def test_select_best_within_budget(tmp_path: Path) -> None:
    trials = [
        (0, "COMPLETE", 0.80, 4.0, 32, None, None),
        (1, "COMPLETE", 0.90, 12.0, 32, None, None),
        (2, "COMPLETE", 0.85, 8.0, 32, None, None),
    ]
    make_study(tmp_path, trials, weights=True)
    study = load_study(out=tmp_path)
    records = study_records(study)

    assert select_trial(study, records, None, 10.0).number == 2
    assert select_trial(study, records, None, None).number == 1
    with pytest.raises(ExportError, match=r"no completed trial with weights within the 3 ms budget"):
        select_trial(study, records, None, 3.0)


def test_write_bundle_created_unchanged_replaced(tmp_path: Path) -> None:
    destination = tmp_path / "bundle"
    files = {"model_card.json": b"{}", "model.tflite": b"first"}

    assert write_bundle(files, destination) == "created"
    assert write_bundle(files, destination) == "unchanged"
    assert write_bundle({**files, "model.tflite": b"second"}, destination) == "replaced"
    assert (destination / "model.tflite").read_bytes() == b"second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]


def test_write_bundle_into_empty_folder(tmp_path: Path) -> None:
    destination = tmp_path / "bundle"
    destination.mkdir()

    assert write_bundle({"model_card.json": b"{}"}, destination) == "created"


def test_write_bundle_rejects_foreign_folder(tmp_path: Path) -> None:
    destination = tmp_path / "photos"
    destination.mkdir()
    (destination / "holiday.jpg").write_bytes(b"jpeg")

    with pytest.raises(ExportError, match=r"is not empty and contains no model_card\.json, so it is not an earlier export"):
        write_bundle({"model_card.json": b"{}"}, destination)
    assert (destination / "holiday.jpg").read_bytes() == b"jpeg"


def test_write_bundle_rejects_file(tmp_path: Path) -> None:
    destination = tmp_path / "bundle"
    destination.write_text("not a folder")

    with pytest.raises(ExportError, match=r"exists and is a file; choose a folder name"):
        write_bundle({"model_card.json": b"{}"}, destination)
