"""Export one trial of a search as a deployable bundle: spec, weights, LCE flatbuffer, model card.

The trial's spec is built, its trained weights are loaded and the model is converted with
LCE. Before anything is written, the flatbuffer runs in LCE's interpreter as deployed, with
the indirect BGEMM kernels that grouped binary convs need and with XNNPACK, on real face
crops from the data. The export is rejected unless the mean cosine similarity between its
embeddings and the Keras model's is at least 0.999. The bundle in ``--to``
contains, named after the spec:

- ``<name>.yaml``: the spec, which ``blocks.spec.load_spec`` and ``build_model`` rebuild;
- ``<name>.weights.h5``: the trained Keras weights, copied unchanged from the study;
- ``<name>.tflite``: the LCE flatbuffer;
- ``model_card.md`` and ``model_card.json``: data and protocol, accuracy, latency with its
  target and board state, MACs, binary-kernel share, parameters, size, parity, file hashes
  and the commands that reproduce the bundle;
- ``SHA256SUMS``: the SHA-256 of every other file, in ``sha256sum -c`` format.

The bundle is written to a temporary folder and renamed into place. Exporting the same
trial again gives the same bytes, and a bundle that is already up to date is left as is.
Expected cost: a few seconds to convert a BinaryFaceNet-sized model plus loading the
evaluation images of the data (aligned crops are cached after the first run).

Example::

    python -m search.export --out runs/att --best --to exports/att-best \\
        --data ../shared/data/att_faces --align none
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from blocks.errors import BinaryFaceError
from search.align import ALIGN_MODES
from search.dashboard import DATA_ATTR, load_study, read_spec_text, redact_url, resolve_artifact, study_budget_ms
from search.evaluate import keras_embedder, tflite_embedder
from search.study import TrialRecord, best_feasible, study_records

__all__ = [
    "CARD_JSON",
    "CARD_MARKDOWN",
    "ExportError",
    "ExportResult",
    "PARITY_MIN_COSINE",
    "ParityError",
    "ParityResult",
    "check_parity",
    "export_trial",
    "main",
    "select_trial",
    "write_bundle",
]

log = logging.getLogger(__name__)

PARITY_MIN_COSINE = 0.999
PARITY_IMAGES = 32
INTERPRETER_OPTIONS = {"use_indirect_bgemm": True, "use_xnnpack": True, "num_threads": 1}
CARD_MARKDOWN = "model_card.md"
CARD_JSON = "model_card.json"
CHECKSUMS = "SHA256SUMS"
ALIGN_ATTR = "align"
SEED_ATTR = "seed"
# Search CLI protocols mapped to the search.evaluate protocol that scores the same pairs.
EVALUATE_PROTOCOLS = {"identity-split": "folder", "lfw-view1": "lfw-view1"}


class ExportError(BinaryFaceError, ValueError):
    """A trial cannot be exported: not found, not trained, missing files or an unusable folder."""


class ParityError(ExportError):
    """The flatbuffer's embeddings do not match the Keras model's."""


@dataclass(frozen=True)
class ParityResult:
    """Cosine similarity between LCE and Keras embeddings of the same crops."""

    mean_cosine: float
    min_cosine: float
    images: int
    threshold: float
    interpreter: dict[str, Any] = field(default_factory=lambda: dict(INTERPRETER_OPTIONS))


@dataclass(frozen=True)
class ExportResult:
    """Outcome of an export: the folder, the SHA-256 of its files and whether anything changed.

    ``status`` is ``"created"``, ``"replaced"`` (an older bundle was there) or ``"unchanged"``.
    """

    destination: Path
    trial: int
    status: str
    parity: ParityResult
    hashes: dict[str, str]


def select_trial(study: Any, records: Sequence[TrialRecord], number: int | None, budget_ms: float | None) -> TrialRecord:
    """Return trial ``number``, or the most accurate feasible one when ``number`` is None.

    Raises:
        ExportError: the trial does not exist, is not finished, or was not trained.
    """
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    trained = [record.number for record in records if _weights_attr(trials[record.number])]
    listed = ", ".join(str(value) for value in trained) or "none"
    if number is None:
        best = [record for record in best_feasible(list(records), budget_ms) if record.number in trained]
        if not best:
            within = f" within the {budget_ms:g} ms budget" if budget_ms is not None else ""
            raise ExportError(f"study {study.study_name!r} has no completed trial with weights{within}")
        return best[0]

    by_number = {record.number: record for record in records}
    if number not in by_number:
        known = sorted(trials)
        span = f"0 to {known[-1]}" if known else "none"
        raise ExportError(
            f"trial {number} is not a finished trial of study {study.study_name!r} (trial numbers: {span}); "
            f"trials with weights: {listed}"
        )
    record = by_number[number]
    if number not in trained:
        outcome = f"{record.state}: {record.reason}" if record.reason else record.state
        raise ExportError(f"trial {number} has no trained weights ({outcome}); trials with weights: {listed}")
    return record


def check_parity(
    model: Any,
    flatbuffer: bytes,
    images: np.ndarray,
    *,
    threshold: float = PARITY_MIN_COSINE,
    options: Mapping[str, Any] | None = None,
) -> ParityResult:
    """Compare the flatbuffer's embeddings with the Keras model's on uint8 RGB crops.

    The flatbuffer runs in LCE's interpreter with the ``use_indirect_bgemm`` and
    ``use_xnnpack`` of ``options`` (the latency measurement's) or of ``INTERPRETER_OPTIONS``,
    and without XNNPACK where XNNPACK changes its output (see `search.evaluate.tflite_embedder`).

    Raises:
        ParityError: the mean cosine similarity is below ``threshold`` or not finite.
    """
    if len(images) == 0:
        raise ExportError("the parity check needs at least one face crop, the data gave none")
    reference = keras_embedder(model, batch_size=min(len(images), 32))(images)
    chosen = {key: bool((options or {}).get(key, INTERPRETER_OPTIONS[key])) for key in ("use_indirect_bgemm", "use_xnnpack")}
    embedder = tflite_embedder(flatbuffer, num_threads=INTERPRETER_OPTIONS["num_threads"], **chosen)
    deployed = embedder(images)
    cosines = _row_cosines(reference, deployed)

    mean = float(np.mean(cosines))
    result = ParityResult(mean_cosine=mean, min_cosine=float(np.min(cosines)), images=len(images), threshold=threshold,
                          interpreter=dict(embedder.options))
    if not math.isfinite(mean) or mean < threshold:
        raise ParityError(
            f"LCE and Keras embeddings differ: mean cosine {mean:.6f} over {len(images)} face crops is below "
            f"{threshold} (minimum {result.min_cosine:.6f}); nothing was exported"
        )
    return result


def write_bundle(files: dict[str, bytes], destination: Path) -> str:
    """Write ``files`` as the folder ``destination`` atomically; return what happened.

    Returns ``"unchanged"`` when the folder already contains exactly these files and bytes,
    ``"replaced"`` when it contained another bundle, and ``"created"`` otherwise.

    Raises:
        ExportError: ``destination`` is a file, or a non-empty folder without a model card.
    """
    if destination.exists():
        if not destination.is_dir():
            raise ExportError(f"export folder {destination} exists and is a file; choose a folder name")
        existing = {path.name for path in destination.iterdir()}
        if existing == set(files) and all((destination / name).read_bytes() == data for name, data in files.items()):
            return "unchanged"
        if existing and CARD_JSON not in existing:
            raise ExportError(
                f"export folder {destination} is not empty and contains no {CARD_JSON}, so it is not an earlier "
                "export; choose a new or empty folder"
            )

    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{destination.name}.tmp-{os.getpid()}"
    retired = parent / f".{destination.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        status = "created"
        if destination.exists():
            status = "replaced" if any(destination.iterdir()) else "created"
            os.replace(destination, retired)
        try:
            os.replace(staging, destination)
        except OSError:
            if retired.exists():
                os.replace(retired, destination)  # keep the earlier bundle rather than none
            raise
    except OSError as error:
        raise ExportError(f"cannot write the export folder {destination}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return status


def export_trial(
    *,
    destination: Path,
    out: Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    trial: int | None = None,
    budget_ms: float | None = None,
    data: Path | None = None,
    align: str | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
    parity_images: int = PARITY_IMAGES,
    progress: bool = False,
) -> ExportResult:
    """Export trial ``trial`` (or the best feasible one when None) of a study to ``destination``.

    ``data``, ``align`` and ``seed`` default to what the study records, then to ``auto``
    alignment and seed 0; without a recorded or given data folder the export is rejected.

    Raises:
        ExportError: the trial or its files cannot be used, the data folder is missing, or
            the parity check fails (``ParityError``).
    """
    from blocks.convert import audit_flatbuffer, convert_model
    from blocks.errors import ConversionError, SpecError
    from blocks.spec import parse_spec

    study = load_study(out=out, storage=storage, study_name=study_name)
    records = study_records(study)
    if budget_ms is None:
        budget_ms = study_budget_ms(study, records)
    record = select_trial(study, records, trial, budget_ms)
    frozen = next(item for item in study.get_trials(deepcopy=False) if item.number == record.number)

    spec_text = read_spec_text(record.spec, frozen.user_attrs.get("spec_yaml"), out)
    if spec_text is None:
        raise ExportError(f"spec file of trial {record.number} not found: {record.spec}")
    weights_path = resolve_artifact(_weights_attr(frozen), out, "models")
    if weights_path is None:
        raise ExportError(f"weights file of trial {record.number} not found: {_weights_attr(frozen)}")
    data, align, seed = _data_settings(study, data, align, seed)

    try:
        spec = parse_spec(spec_text, source=record.spec or "")
    except SpecError as error:
        raise ExportError(f"spec of trial {record.number} is invalid: {error}") from error
    model = _load_model(spec, weights_path)
    try:
        flatbuffer, messages = convert_model(model)
    except ConversionError as error:
        raise ExportError(f"trial {record.number}: {error}") from error
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)

    face_set = _load_faces(data, align=align, seed=seed, image_size=spec.input_shape[0], cache_dir=cache_dir, progress=progress)
    images = _spread_sample(face_set.eval_images, parity_images)
    parity = check_parity(model, flatbuffer, images, options=(record.latency or {}).get("options"))
    log.info("parity of trial %d: mean cosine %.6f over %d face crops", record.number, parity.mean_cosine, parity.images)

    files = {
        f"{spec.name}.yaml": spec.to_yaml().encode("utf-8"),
        f"{spec.name}.weights.h5": weights_path.read_bytes(),
        f"{spec.name}.tflite": flatbuffer,
    }
    hashes = {name: _sha256(content) for name, content in files.items()}
    command = _export_command(
        record.number, out=out, storage=storage, study_name=study.study_name, destination=destination,
        data=data, align=align, seed=seed, parity_images=parity_images,
    )
    card = _card(
        study, record, frozen, spec, audit, parity, hashes, files,
        data=data, align=align, seed=seed, face_set=face_set, command=command, destination=destination,
    )
    files[CARD_JSON] = (json.dumps(card, indent=2, sort_keys=False) + "\n").encode("utf-8")
    files[CARD_MARKDOWN] = _card_markdown(card).encode("utf-8")
    hashes = {name: _sha256(content) for name, content in files.items()}
    files[CHECKSUMS] = "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items())).encode("utf-8")

    status = write_bundle(files, destination)
    log.debug("trial %d exported to %s (%s)", record.number, destination, status)
    return ExportResult(destination=destination, trial=record.number, status=status, parity=parity, hashes=hashes)


def _k_bit_macs(total: Any, binary: Any, float_macs: Any) -> int | None:
    """Return the MACs that are neither 1-bit nor float (2-8 bit layers), when the counts are known."""
    if not all(isinstance(value, (int, float)) for value in (total, binary, float_macs)):
        return None
    return max(0, int(total) - int(binary) - int(float_macs))


def _weights_attr(trial: Any) -> str | None:
    """Return the weights file a completed trial recorded; None for any other trial."""
    weights = trial.user_attrs.get("weights")
    return weights if trial.state.name == "COMPLETE" and isinstance(weights, str) else None


def _data_settings(study: Any, data: Path | None, align: str | None, seed: int | None) -> tuple[Path, str, int]:
    """Fill the data folder, alignment and seed from the study where not given."""
    recorded = study.user_attrs
    if data is None:
        if not isinstance(recorded.get(DATA_ATTR), str):
            raise ExportError(
                "the study does not record its face folder; pass --data with the folder the search used, "
                "whose face crops the parity check runs on"
            )
        data = Path(recorded[DATA_ATTR])
    if align is None:
        align = recorded.get(ALIGN_ATTR) if recorded.get(ALIGN_ATTR) in ALIGN_MODES else "auto"
    if seed is None:
        seed = recorded.get(SEED_ATTR) if isinstance(recorded.get(SEED_ATTR), int) else 0
    return data, align, seed


def _load_model(spec: Any, weights_path: Path) -> Any:
    import tensorflow as tf

    from blocks.build import build_model

    # Larq's quantizers take auto-numbered names (ste_sign_2) that end up in the flatbuffer's
    # tensor names. Numbering from zero makes a second export in one process give the same bytes.
    tf.keras.backend.reset_uids()
    model = build_model(spec)
    try:
        model.load_weights(str(weights_path))
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot load weights {weights_path} into spec {spec.name!r}: {error}") from error
    return model


def _load_faces(data: Path, *, align: str, seed: int, image_size: int, cache_dir: Path | None, progress: bool) -> Any:
    from search.data import load_face_folder

    # The evaluation split only: the search never trained on these identities.
    return load_face_folder(
        data, seed=seed, align=align, image_size=image_size, cache_dir=cache_dir, progress=progress, load_train=False
    )


def _spread_sample(images: np.ndarray, count: int) -> np.ndarray:
    """Return ``count`` images spread evenly over ``images``, so several identities take part."""
    if len(images) <= count:
        return images
    indices = np.unique(np.linspace(0, len(images) - 1, count).round().astype(int))
    return images[indices]


def _row_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    first = np.asarray(first, dtype=np.float64).reshape(len(first), -1)
    second = np.asarray(second, dtype=np.float64).reshape(len(second), -1)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    # A zero embedding has no direction, so it counts as a mismatch.
    return np.where(norms > 0, np.sum(first * second, axis=1) / np.maximum(norms, 1e-30), 0.0)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _export_command(
    number: int,
    *,
    out: Path | None,
    storage: str | None,
    study_name: str,
    destination: Path,
    data: Path,
    align: str,
    seed: int,
    parity_images: int,
) -> str:
    words = ["python", "-m", "search.export"]
    words += ["--out", str(out)] if out is not None else ["--storage", redact_url(storage or ""), "--study-name", study_name]
    words += ["--trial", str(number), "--to", str(destination), "--data", str(data), "--align", align, "--seed", str(seed)]
    if parity_images != PARITY_IMAGES:
        words += ["--parity-images", str(parity_images)]
    return shlex.join(words)


def _card(
    study: Any,
    record: TrialRecord,
    frozen: Any,
    spec: Any,
    audit: Any,
    parity: ParityResult,
    hashes: dict[str, str],
    files: dict[str, bytes],
    *,
    data: Path,
    align: str,
    seed: int,
    face_set: Any,
    command: str,
    destination: Path,
) -> dict[str, Any]:
    """Return the model card as plain data; nothing in it depends on when the export ran."""
    attrs = frozen.user_attrs
    latency = attrs.get("latency") if isinstance(attrs.get("latency"), dict) else {}
    tflite_name = f"{spec.name}.tflite"
    evaluate = shlex.join([
        "python", "-m", "search.evaluate", "--model", str(destination / tflite_name), "--data", str(data),
        "--protocol", EVALUATE_PROTOCOLS.get(face_set.protocol, "folder"), "--align", align, "--seed", str(seed),
    ])
    return {
        "name": spec.name,
        "description": spec.description,
        "study": study.study_name,
        "trial": record.number,
        "completed": frozen.datetime_complete.isoformat(timespec="seconds") if frozen.datetime_complete else None,
        "search_params": record.params,
        "data": {
            "folder": str(data),
            "protocol": face_set.protocol,
            "align": align,
            "seed": seed,
            "evaluation_pairs": int(len(face_set.pairs)),
            "evaluation_images": int(len(face_set.eval_images)),
            "input_shape": list(spec.input_shape),
            "pixel_scaling": "(pixel - 127.5) / 128, RGB",
            "recorded_by_study": isinstance(study.user_attrs.get(DATA_ATTR), str),
        },
        "accuracy": {
            "verification_accuracy": record.accuracy,
            "std": record.accuracy_std,
            "auc": record.auc,
            "measured": "by the search: 10-fold verification accuracy of the Keras model on the evaluation pairs",
        },
        "latency": {
            "median_ms": record.latency_ms,
            "spread_ms": latency.get("spread_ms"),
            "runs": latency.get("runs"),
            "warmup": latency.get("warmup"),
            "median_from": latency.get("median_from"),
            "target": latency.get("target"),
            "options": latency.get("options"),
            "board_state": latency.get("board_state"),
        },
        "macs": {
            "binary": record.binary_macs,
            "k_bit": _k_bit_macs(audit.total_macs, record.binary_macs, record.float_macs),
            "float": record.float_macs,
            "binary_kernel_share": audit.binary_kernel_mac_share,
            "binary_kernel_macs": audit.binary_kernel_macs,
            "total": audit.total_macs,
        },
        "parameters": record.params_count,
        "size_bytes": record.size_bytes,
        "flatbuffer_bytes": len(files[tflite_name]),
        "lce": {
            "op_counts": audit.op_counts,
            "float_fallbacks": [f"{item.layer}: {item.reason}" for item in audit.float_fallbacks],
            "converter_messages": audit.converter_messages,
        },
        "parity": {**asdict(parity), "mean_cosine": round(parity.mean_cosine, 6),
                   "min_cosine": round(parity.min_cosine, 6), "interpreter": parity.interpreter},
        "files": {name: {"sha256": hashes[name], "bytes": len(files[name])} for name in files},
        "reproduce": {"export": command, "evaluate": evaluate, "search": study.user_attrs.get("command")},
    }


def _card_markdown(card: dict[str, Any]) -> str:
    data, accuracy, latency, macs, parity = card["data"], card["accuracy"], card["latency"], card["macs"], card["parity"]
    target = latency.get("target") or {}
    board = latency.get("board_state") or {}
    lines = [
        f"# {card['name']}",
        "",
        card["description"] or f"Trial {card['trial']} of the search study {card['study']!r}.",
        "",
        f"Study {card['study']!r}, trial {card['trial']}, completed {card['completed'] or 'unknown'}.",
        "",
        "## Data and protocol",
        "",
        f"- Face folder: `{data['folder']}`, protocol {data['protocol']}, alignment {data['align']}, seed {data['seed']}",
        f"- Evaluation: {data['evaluation_pairs']} pairs over {data['evaluation_images']} images",
        f"- Input: {'x'.join(str(side) for side in data['input_shape'])} crops, pixels scaled as {data['pixel_scaling']}",
        "",
        "## Accuracy",
        "",
        f"- Verification accuracy: {_number(accuracy['verification_accuracy'], '.4f')}"
        f" \u00b1 {_number(accuracy['std'], '.4f')} (10 folds), AUC {_number(accuracy['auc'], '.4f')}",
        f"- Measured {accuracy['measured']}",
        "",
        "## Latency",
        "",
        f"- Median {_number(latency['median_ms'], '.3f')} ms per image over {latency['runs'] or '?'} runs"
        f" (spread {_number(latency['spread_ms'], '.3f')} ms, {latency['warmup'] or 0} warm-up runs excluded)",
        f"- Target: {_inline(target) or 'not recorded'}",
        f"- Options: {_inline(latency.get('options') or {}) or 'not recorded'}",
        f"- Board state before: {_inline(board.get('before') or {}) or 'not read by this target'}",
        f"- Board state after: {_inline(board.get('after') or {}) or 'not read by this target'}",
        "",
        "## Cost",
        "",
        f"- MACs: {_count(macs['binary'])} binary, {_count(macs.get('k_bit'))} 2-8 bit, {_count(macs['float'])} float "
        "(declared by the Keras model)",
        f"- Binary-kernel share: {100 * macs['binary_kernel_share']:.1f} % of {_count(macs['total'])} MACs run in LceBconv2d",
        f"- Parameters: {_count(card['parameters'])}; size {_number(card['size_bytes'], ',.0f')} bytes "
        f"(1-bit kernels at 1 bit); flatbuffer {card['flatbuffer_bytes']:,} bytes",
        f"- LCE ops: {_inline(card['lce']['op_counts'])}",
        f"- Declared 1-bit but run in float: {', '.join(card['lce']['float_fallbacks']) or 'none'}",
        "",
        "## Parity",
        "",
        f"- Mean cosine between LCE and Keras embeddings: {parity['mean_cosine']:.6f} (minimum {parity['min_cosine']:.6f}) "
        f"over {parity['images']} evaluation crops; the export requires at least {parity['threshold']}",
        f"- Interpreter options: {_inline(parity['interpreter'])}",
        "",
        "## Files",
        "",
        "| file | bytes | SHA-256 |",
        "|---|---|---|",
        *(f"| {name} | {entry['bytes']:,} | `{entry['sha256']}` |" for name, entry in card["files"].items()),
        "",
        "## Reproduce",
        "",
        "Rebuild this bundle from the study:",
        "",
        f"    {card['reproduce']['export']}",
        "",
        "Score the flatbuffer on the same evaluation pairs:",
        "",
        f"    {card['reproduce']['evaluate']}",
        "",
    ]
    if card["reproduce"]["search"]:
        lines += ["Run the search again:", "", f"    {card['reproduce']['search']}", ""]
    else:
        lines += ["The study does not record the search command.", ""]
    return "\n".join(lines)


def _number(value: Any, format_spec: str) -> str:
    return format(value, format_spec) if isinstance(value, (int, float)) and math.isfinite(value) else "?"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {json.dumps(value) if isinstance(value, (dict, list)) else value}" for key, value in mapping.items()
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m search.export",
        description="Export a trial as spec, Keras weights, LCE flatbuffer and model card, after checking "
        "that the flatbuffer's embeddings match the Keras model's on real faces.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--out", type=Path, help="output folder of a search run (its study.db, specs/ and models/)")
    source.add_argument("--storage", help="Optuna storage URL of the study")
    parser.add_argument("--study-name", help="study to read (default: the only study in the storage)")
    selection = parser.add_mutually_exclusive_group(required=True)
    selection.add_argument("--trial", type=int, help="number of the trial to export")
    selection.add_argument("--best", action="store_true", help="export the most accurate completed trial within the budget")
    parser.add_argument("--budget-ms", type=float, help="latency budget for --best, in milliseconds per image (default: the budget the study records)")
    parser.add_argument("--to", type=Path, required=True, help="export folder to create or update")
    parser.add_argument("--data", type=Path, help="face folder whose evaluation crops the parity check uses (default: the folder the study records)")
    parser.add_argument("--align", choices=ALIGN_MODES, help="face alignment of --data (default: the study's, else auto)")
    parser.add_argument("--seed", type=int, help="seed of the identity split of --data (default: the study's, else 0)")
    parser.add_argument("--cache-dir", type=Path, help="aligned-crop cache folder (default: $BINARYFACE_CACHE/aligned)")
    parser.add_argument("--parity-images", type=int, default=PARITY_IMAGES, help="face crops the parity check compares (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the result line")
    args = parser.parse_args(argv)
    if args.trial is not None and args.trial < 0:
        parser.error(f"--trial must be a trial number (0 or more), got {args.trial}")
    if args.budget_ms is not None and args.budget_ms <= 0:
        parser.error(f"--budget-ms must be positive, got {args.budget_ms:g}")
    if args.parity_images < 1:
        parser.error(f"--parity-images must be at least 1, got {args.parity_images}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    try:
        result = export_trial(
            destination=args.to,
            out=args.out,
            storage=args.storage,
            study_name=args.study_name,
            trial=args.trial,
            budget_ms=args.budget_ms,
            data=args.data,
            align=args.align,
            seed=args.seed,
            cache_dir=args.cache_dir,
            parity_images=args.parity_images,
            progress=not args.quiet,
        )
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(
        f"trial {result.trial}: {result.status} {result.destination} "
        f"(parity: mean cosine {result.parity.mean_cosine:.6f} over {result.parity.images} face crops)"
    )
    for name, digest in sorted(result.hashes.items()):
        print(f"  {digest}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
