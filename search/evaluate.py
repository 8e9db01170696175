"""Score a face-embedding model on verification pairs, at full and very low resolution.

The model is a Keras HDF5 file, an LCE flatbuffer (``.tflite``, run by LCE's interpreter with
the indirect BGEMM kernels and XNNPACK, as deployed) or a spec YAML with ``--weights``. The
pairs come from LFW View 1 (``pairsDevTest.txt``), an InsightFace ``.bin`` file or a folder of
identities. Each setting is scored with and without flip averaging: 10-fold accuracy, ROC AUC,
EER and TAR at FAR 1 % and 0.1 %. Expected cost for BinaryFaceNet on LFW View 1: about a
minute of MTCNN alignment on two CPU cores the first time (cached afterwards), then well
under a minute of inference per setting.

Example::

    python -m search.evaluate --model model.h5 --data lfw/lfw-deepfunneled \\
        --protocol lfw-view1 --vlr 7 14 28 --json scores.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blocks.errors import BinaryFaceError
from search.align import ALIGN_MODES, ARCFACE_SIZE, AlignStats
from search.data import PAIR_ORDERS, normalize, split_gallery_probe
from search.metrics import (
    DEFAULT_FARS,
    IdentificationResult,
    VerificationResult,
    evaluate_identification,
    evaluate_verification,
    fuse_flip,
    l2_normalize,
    pair_scores,
)
from search.vlr import VLR_MODES, degrade_pairs

__all__ = [
    "EVAL_PROTOCOLS",
    "EvalData",
    "EvaluationError",
    "EvaluationReport",
    "EvaluationRow",
    "Embedder",
    "batch_coupled_layers",
    "embed",
    "embed_keras",
    "embed_tflite",
    "evaluate_model",
    "evaluate_pairs",
    "keras_embedder",
    "load_embedder",
    "load_eval_data",
    "load_keras_model",
    "main",
    "tflite_embedder",
]

logger = logging.getLogger(__name__)

EVAL_PROTOCOLS = ("lfw-view1", "bin", "folder")
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras", ".tflite", ".yaml", ".yml")
OPEN_SET_UNKNOWN_FRACTION = 0.25
# Images of the first batch that also run without XNNPACK, and the largest relative
# difference accepted between the two.
XNNPACK_CHECK_IMAGES = 4
XNNPACK_RTOL = 1e-3


class EvaluationError(BinaryFaceError, ValueError):
    """A model, its weights or the evaluation settings cannot be used."""


class Embedder:
    """A loaded model that maps uint8 RGB face crops (N, S, S, 3) to raw embeddings (N, D).

    ``run_batch`` receives float32 crops already normalised as ``(x - 127.5) / 128`` and at
    most ``batch_size`` of them at a time.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        input_size: int,
        batch_size: int,
        description: str,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
        self.run_batch = run_batch
        self.input_size = input_size
        self.batch_size = batch_size
        self.description = description
        self.progress = progress
        # Interpreter settings of a flatbuffer embedder, empty for Keras.
        self.options: dict[str, Any] = {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.input_size, self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise EvaluationError(
                f"{self.description} takes (N, {self.input_size}, {self.input_size}, 3) crops, got {images.shape}"
            )
        from tqdm import tqdm

        outputs = []
        show = self.progress and sys.stderr.isatty()
        with tqdm(total=len(images), desc="embedding", unit="img", disable=not show, leave=False) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = normalize(images[start : start + self.batch_size])
                outputs.append(np.asarray(self.run_batch(batch), dtype=np.float32).reshape(len(batch), -1))
                bar.update(len(batch))
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outputs)


def _square_input_size(shape: Sequence[int | None], description: str) -> int:
    if len(shape) != 4 or shape[3] != 3:
        raise EvaluationError(f"{description} must take (batch, size, size, 3) images, its input is {tuple(shape)}")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return ARCFACE_SIZE
    if height != width:
        raise EvaluationError(f"{description} must take square images, its input is {height}x{width}")
    return int(height)


def batch_coupled_layers(model: Any) -> list[str]:
    """Return the names of the layers whose output for one image depends on the rest of the batch.

    larq's ``DoReFa(mode="weights")`` divides by the maximum of ``tanh`` over the whole input
    tensor, batch axis included. The released BinaryFaceNet uses it as an input quantizer.
    There the maximum moves the 1-bit threshold of near-zero activations, so an image's
    embedding changes with the other images of its batch.

    NOTE: one image per call removes that effect only. LCE folds BatchNorm into the convs and
    rounds near-zero activations differently, so its embeddings of such a model still differ.
    """
    names = []
    for layer in model.submodules:
        quantizer = getattr(layer, "input_quantizer", None)
        if type(quantizer).__name__ == "DoReFa" and getattr(quantizer, "mode", None) == "weights":
            names.append(layer.name)
    return names


def keras_embedder(model: Any, *, batch_size: int = 64, progress: bool = False) -> Embedder:
    """Wrap a ``tf.keras.Model`` whose single output is the embedding.

    A model with batch-coupled layers (see `batch_coupled_layers`) embeds one image per call,
    as a deployed model does, regardless of ``batch_size``.
    """
    if len(model.outputs) != 1:
        raise EvaluationError(f"the model must have one output (the embedding), it has {len(model.outputs)}")
    input_size = _square_input_size(tuple(model.inputs[0].shape), f"model {model.name!r}")
    coupled = batch_coupled_layers(model)
    if coupled and batch_size > 1:
        logger.info(
            "model %r: %d layers (%s first) quantize their input with DoReFa(mode='weights'), which depends "
            "on the whole batch; embedding one image at a time",
            model.name, len(coupled), coupled[0],
        )
        batch_size = 1

    def run_batch(batch: np.ndarray) -> np.ndarray:
        # A short last batch is padded so the compiled predict function is traced only once.
        if len(batch) < batch_size:
            padded = np.zeros((batch_size, *batch.shape[1:]), dtype=batch.dtype)
            padded[: len(batch)] = batch
            return model.predict_on_batch(padded)[: len(batch)]
        return model.predict_on_batch(batch)

    return Embedder(run_batch, input_size=input_size, batch_size=batch_size,
                    description=f"Keras model {model.name!r}", progress=progress)


def tflite_embedder(
    flatbuffer: bytes,
    *,
    num_threads: int = 1,
    progress: bool = False,
    use_indirect_bgemm: bool = True,
    use_xnnpack: bool = True,
) -> Embedder:
    """Run an LCE flatbuffer in LCE's interpreter with the options of a deployment.

    Grouped binary convolutions need ``use_indirect_bgemm=True``, and ``use_xnnpack=True``
    runs the float ops through XNNPACK. LCE 0.16's XNNPACK delegate computes some float convs
    wrong (a 3x3 conv with stride 4 and "same" padding on 112 px). So the first batch also
    runs without XNNPACK, and a difference above `XNNPACK_RTOL` drops XNNPACK for the run.
    An int8 input or output is quantised and dequantised with the tensor's scale and zero point.
    """
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from targets.base import flatbuffer_problem

    problem = flatbuffer_problem(flatbuffer)
    if problem is not None:
        raise EvaluationError(
            f"LCE interpreter cannot load the flatbuffer: {problem}; "
            "convert the model again, for example with python -m blocks.inspect SPEC --weights H5 --tflite PATH"
        )

    def load(with_xnnpack: bool) -> Any:
        try:
            return Interpreter(
                flatbuffer, num_threads=num_threads, use_indirect_bgemm=use_indirect_bgemm, use_xnnpack=with_xnnpack
            )
        except (RuntimeError, ValueError) as error:
            cause = " ".join(str(error).split()) or type(error).__name__
            raise EvaluationError(f"LCE interpreter cannot load the flatbuffer: {cause}") from error

    interpreter = load(use_xnnpack)
    checked = not use_xnnpack
    if len(interpreter.input_shapes) != 1 or len(interpreter.output_shapes) != 1:
        raise EvaluationError(
            f"the flatbuffer must have one input and one output, it has {len(interpreter.input_shapes)} "
            f"and {len(interpreter.output_shapes)}"
        )
    input_shape = tuple(interpreter.input_shapes[0])
    input_size = _square_input_size(input_shape, "the flatbuffer")
    model_batch = int(input_shape[0])
    input_type = np.dtype(interpreter.input_types[0])
    output_type = np.dtype(interpreter.output_types[0])

    def run_on(chosen: Any, batch: np.ndarray) -> np.ndarray:
        if input_type == np.int8:
            scale, zero_point = chosen.input_scales[0], chosen.input_zero_points[0]
            batch = np.clip(np.round(batch / scale + zero_point), -128, 127).astype(np.int8)
        if model_batch == 1:
            out = chosen.predict(batch)
        else:
            padded = np.zeros((model_batch, *batch.shape[1:]), dtype=batch.dtype)
            padded[: len(batch)] = batch
            out = chosen.interpreter.predict([padded])[0][: len(batch)]
        if output_type == np.int8:
            out = (out.astype(np.float32) - chosen.output_zero_points[0]) * chosen.output_scales[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def run_batch(batch: np.ndarray) -> np.ndarray:
        nonlocal interpreter, checked
        out = run_on(interpreter, batch)
        if not checked:
            checked = True
            sample = batch[:XNNPACK_CHECK_IMAGES]
            reference = run_on(load(False), sample)
            scale = float(np.max(np.abs(reference))) or 1.0
            difference = float(np.max(np.abs(out[: len(sample)] - reference))) / scale
            if difference > XNNPACK_RTOL:
                logger.warning(
                    "XNNPACK changes this flatbuffer's output by %.3g (relative, above %g); running without it",
                    difference, XNNPACK_RTOL,
                )
                interpreter = load(False)
                embedder.options["use_xnnpack"] = False
                out = run_on(interpreter, batch)
        return out

    batch_size = 64 if model_batch == 1 else model_batch
    embedder = Embedder(run_batch, input_size=input_size, batch_size=batch_size,
                        description="the flatbuffer", progress=progress)
    embedder.options = {"use_indirect_bgemm": use_indirect_bgemm, "use_xnnpack": use_xnnpack, "num_threads": num_threads}
    return embedder


def load_keras_model(path: str | Path, *, weights: str | Path | None = None) -> Any:
    """Load a Keras HDF5 or ``.keras`` model, or build a spec YAML, and load ``weights``.

    Larq is imported first so that its quantizers and layers deserialise. A spec YAML is
    built by ``blocks.build.build_model`` and needs ``weights``.
    """
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"model file not found: {path}")
    import larq  # noqa: F401  (registers larq's layers and quantizers for deserialisation)
    import tensorflow as tf

    if path.suffix in (".yaml", ".yml"):
        if weights is None:
            raise EvaluationError(f"{path} is a spec; pass --weights with the trained weights (.h5)")
        from blocks.build import build_model
        from blocks.spec import load_spec

        model = build_model(load_spec(path))
    else:
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except (OSError, ValueError, TypeError) as error:
            raise EvaluationError(f"cannot load Keras model {path}: {error}") from error

    if weights is not None:
        if not Path(weights).exists():
            raise EvaluationError(f"weights file not found: {weights}")
        try:
            model.load_weights(weights)
        except (OSError, ValueError) as error:
            raise EvaluationError(f"cannot load weights {weights} into {path}: {error}") from error
    return model


def load_embedder(
    path: str | Path,
    *,
    weights: str | Path | None = None,
    batch_size: int = 64,
    num_threads: int = 1,
    progress: bool = False,
) -> Embedder:
    """Load a ``.h5``/``.keras`` model, a ``.tflite`` flatbuffer or a spec YAML with weights."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise EvaluationError(f"unknown model format {path.name!r}; expected one of {', '.join(MODEL_SUFFIXES)}")
    if suffix == ".tflite":
        if weights is not None:
            raise EvaluationError("a .tflite flatbuffer contains its weights; drop --weights")
        try:
            flatbuffer = path.read_bytes()
        except OSError as error:
            raise EvaluationError(f"cannot read flatbuffer {path}: {error.strerror}") from error
        try:
            return tflite_embedder(flatbuffer, num_threads=num_threads, progress=progress)
        except EvaluationError as error:
            raise EvaluationError(f"{path}: {error}") from error
    model = load_keras_model(path, weights=weights)
    return keras_embedder(model, batch_size=batch_size, progress=progress)


def embed(embedder: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, flip: bool = True) -> np.ndarray:
    """Return L2-normalised embeddings, summed with the mirrored images' ones when ``flip``."""
    raw = embedder(images)
    if not flip:
        return l2_normalize(raw)
    return fuse_flip(raw, embedder(images[:, :, ::-1]))


def embed_keras(model: Any, images: np.ndarray, *, flip: bool = True, batch_size: int = 64) -> np.ndarray:
    """Return L2-normalised embeddings of uint8 RGB crops from a Keras model."""
    return embed(keras_embedder(model, batch_size=batch_size), images, flip=flip)


def embed_tflite(
    model: str | Path | bytes, images: np.ndarray, *, flip: bool = True, num_threads: int = 1
) -> np.ndarray:
    """Return L2-normalised embeddings of uint8 RGB crops from an LCE flatbuffer (path or bytes)."""
    flatbuffer = model if isinstance(model, bytes) else Path(model).read_bytes()
    return embed(tflite_embedder(flatbuffer, num_threads=num_threads), images, flip=flip)


@dataclass
class EvalData:
    """Evaluation crops (uint8 RGB) with their pairs, and identity labels when known."""

    images: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray
    protocol: str
    source: str
    labels: np.ndarray | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    alignment: AlignStats | None = None


def load_eval_data(
    protocol: str,
    data: str | Path | None,
    *,
    image_size: int = ARCFACE_SIZE,
    align: str = "auto",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    eval_fraction: float = 0.25,
    pair_order: str = "balanced",
    progress: bool = True,
) -> EvalData:
    """Load the pairs of one protocol: ``lfw-view1``, ``bin`` or ``folder``.

    Without ``data``, ``lfw-view1`` fetches LFW through ``search.download.ensure_lfw``. The
    ``folder`` protocol scores the identities that ``load_face_folder`` holds out with the
    same ``seed`` and ``eval_fraction``, so a model trained on that folder is not scored on
    its training identities. ``eval_fraction=1.0`` scores every identity.
    """
    if protocol not in EVAL_PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; expected one of {list(EVAL_PROTOCOLS)}")
    if align not in ALIGN_MODES:
        raise EvaluationError(f"unknown align mode {align!r}; expected one of {list(ALIGN_MODES)}")

    if protocol == "bin":
        if data is None:
            raise EvaluationError("the bin protocol needs --data with an InsightFace .bin file (lfw.bin, agedb_30.bin)")
        from search.insightface import read_verification_bin

        images, issame = read_verification_bin(data, image_size=image_size)
        if align != "auto":
            logger.info("InsightFace .bin images are aligned already; --align %s is not applied", align)
        pairs = np.arange(len(images), dtype=np.int64).reshape(-1, 2)
        return EvalData(images=images, pairs=pairs, issame=np.asarray(issame, dtype=bool),
                        protocol=protocol, source=str(data))

    from search.data import load_face_folder

    if data is None:
        if protocol != "lfw-view1":
            raise EvaluationError("the folder protocol needs --data with a folder of identity folders")
        from search.download import ensure_lfw

        data = ensure_lfw(progress=progress)
    face_set = load_face_folder(
        data,
        seed=seed,
        image_size=image_size,
        eval_fraction=eval_fraction,
        align=align,
        cache_dir=cache_dir,
        progress=progress,
        protocol="lfw-view1" if protocol == "lfw-view1" else "identity-split",
        load_train=False,
        pair_order=pair_order,
    )
    return EvalData(
        images=face_set.eval_images,
        pairs=face_set.pairs,
        issame=face_set.issame,
        protocol=protocol,
        source=str(data),
        labels=face_set.eval_labels,
        skipped=face_set.skipped,
        alignment=face_set.alignment,
    )


@dataclass
class EvaluationRow:
    """Verification scores of one setting: resolution, VLR mode and flip averaging."""

    setting: str
    flip: bool
    vlr_size: int | None
    vlr_mode: str | None
    result: VerificationResult


@dataclass
class EvaluationReport:
    """All settings scored on one set of pairs, plus identification when labels are known."""

    rows: list[EvaluationRow]
    n_pairs: int
    n_genuine: int
    n_images: int
    closed_set: IdentificationResult | None = None
    open_set: IdentificationResult | None = None


def _score(embeddings: np.ndarray, flipped: np.ndarray | None, pairs: np.ndarray, issame: np.ndarray,
           *, n_folds: int, fars: Sequence[float]) -> VerificationResult:
    unit = fuse_flip(embeddings, flipped) if flipped is not None else l2_normalize(embeddings)
    return evaluate_verification(pair_scores(unit, pairs), issame, n_folds=n_folds, fars=fars)


def evaluate_pairs(
    embedder: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    pairs: np.ndarray,
    issame: np.ndarray,
    *,
    flip: bool = True,
    vlr_size: int | None = None,
    vlr_mode: str = "probe",
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
) -> VerificationResult:
    """Score one verification setting; ``embedder`` maps uint8 crops to raw embeddings."""
    if vlr_size is not None:
        images, pairs = degrade_pairs(images, pairs, vlr_size, mode=vlr_mode)
    raw = embedder(images)
    flipped = embedder(images[:, :, ::-1]) if flip else None
    return _score(raw, flipped, pairs, issame, n_folds=n_folds, fars=fars)


def evaluate_model(
    embedder: Callable[[np.ndarray], np.ndarray],
    data: EvalData,
    *,
    flip_modes: Sequence[bool] = (False, True),
    vlr_sizes: Sequence[int] = (),
    vlr_mode: str = "probe",
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    seed: int = 0,
) -> EvaluationReport:
    """Score full-resolution pairs and each VLR size, with and without flip averaging.

    Full-resolution embeddings are computed once and reused by the VLR probe protocol, which
    embeds only the degraded probes. Identification (closed set, and open set with a quarter
    of the identities unenrolled) is added when ``data.labels`` has an identity with two
    images. It uses flip averaging when ``True`` is among ``flip_modes``.
    """
    if vlr_mode not in VLR_MODES:
        raise EvaluationError(f"unknown VLR mode {vlr_mode!r}; expected one of {list(VLR_MODES)}")
    if not flip_modes:
        raise EvaluationError("flip_modes must contain False, True or both")
    use_flip = any(flip_modes)
    images = data.images

    raw = embedder(images)
    flipped = embedder(images[:, :, ::-1]) if use_flip else None
    rows = []
    for flip in flip_modes:
        result = _score(raw, flipped if flip else None, data.pairs, data.issame, n_folds=n_folds, fars=fars)
        rows.append(EvaluationRow("full resolution", flip, None, None, result))
        logger.info("full resolution, flip %s: accuracy %.2f %%", "on" if flip else "off", 100 * result.accuracy)

    for size in vlr_sizes:
        vlr_images, vlr_pairs = degrade_pairs(images, data.pairs, size, mode=vlr_mode)
        if vlr_mode == "probe":
            probes = vlr_images[len(images) :]
            vlr_raw = np.concatenate([raw, embedder(probes)])
            vlr_flipped = np.concatenate([flipped, embedder(probes[:, :, ::-1])]) if flipped is not None else None
        else:
            vlr_raw = embedder(vlr_images)
            vlr_flipped = embedder(vlr_images[:, :, ::-1]) if use_flip else None
        for flip in flip_modes:
            result = _score(vlr_raw, vlr_flipped if flip else None, vlr_pairs, data.issame, n_folds=n_folds, fars=fars)
            rows.append(EvaluationRow(f"VLR {size} px {vlr_mode}", flip, int(size), vlr_mode, result))
            logger.info("VLR %d px %s, flip %s: accuracy %.2f %%", size, vlr_mode, "on" if flip else "off",
                        100 * result.accuracy)

    report = EvaluationReport(rows=rows, n_pairs=len(data.pairs), n_genuine=int(data.issame.sum()),
                              n_images=len(images))
    if data.labels is not None and np.bincount(data.labels).max(initial=0) >= 2:
        unit = fuse_flip(raw, flipped) if flipped is not None else l2_normalize(raw)
        report.closed_set = _identify(unit, data.labels, seed=seed, unknown_fraction=0.0)
        report.open_set = _identify(unit, data.labels, seed=seed, unknown_fraction=OPEN_SET_UNKNOWN_FRACTION)
    return report


def _identify(embeddings: np.ndarray, labels: np.ndarray, *, seed: int, unknown_fraction: float) -> IdentificationResult | None:
    gallery, probes = split_gallery_probe(labels, seed=seed, unknown_fraction=unknown_fraction)
    if len(probes) == 0 or not np.isin(labels[probes], labels[gallery]).any():
        return None
    return evaluate_identification(embeddings[gallery], labels[gallery], embeddings[probes], labels[probes])


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def format_report(report: EvaluationReport) -> str:
    """Return the verification table, then identification lines when computed."""
    fars = list(report.rows[0].result.tar_at_far) if report.rows else []
    header = ["setting", "flip", "accuracy %", "AUC", "EER %", *[f"TAR@FAR={far:g}" for far in fars], "threshold"]
    lines = [header]
    for row in report.rows:
        result = row.result
        lines.append([
            row.setting,
            "yes" if row.flip else "no",
            f"{_percent(result.accuracy)} ± {_percent(result.std)}",
            f"{result.auc:.4f}",
            _percent(result.eer),
            *[f"{result.tar_at_far[far]:.4f}" for far in fars],
            f"{result.threshold:.4f}",
        ])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))

    for name, result in (("closed-set", report.closed_set), ("open-set", report.open_set)):
        if result is None:
            continue
        ranks = ", ".join(f"rank-{rank} {_percent(value)} %" for rank, value in result.rank_accuracy.items())
        line = f"{name} identification ({result.n_known} known, {result.n_unknown} unknown probes): {ranks}, " \
               f"mAP {_percent(result.mean_average_precision)} %"
        for fpir, rates in result.dir_at_fpir.items():
            line += f"; DIR@FPIR={fpir:g} rank-1 {_percent(rates[min(rates)])} %"
        text.append(line)
    return "\n".join(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def report_to_json(report: EvaluationReport, **metadata: Any) -> dict[str, Any]:
    """Return the report as JSON-ready data; infinite thresholds become ``null``."""
    document = dict(metadata)
    document.update(n_pairs=report.n_pairs, n_genuine=report.n_genuine, n_images=report.n_images)
    document["rows"] = [
        {"setting": row.setting, "flip": row.flip, "vlr_size": row.vlr_size, "vlr_mode": row.vlr_mode,
         **asdict(row.result)}
        for row in report.rows
    ]
    for name in ("closed_set", "open_set"):
        result = getattr(report, name)
        document[name] = asdict(result) if result is not None else None
    return _finite(document)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search.evaluate",
        description="Score a face-embedding model on verification pairs (10-fold accuracy, AUC, EER, TAR@FAR).",
    )
    parser.add_argument("--model", required=True, type=Path,
                        help="Keras model (.h5, .keras), LCE flatbuffer (.tflite) or spec YAML (with --weights)")
    parser.add_argument("--weights", type=Path, help="weights (.h5) to load into the model or the built spec")
    parser.add_argument("--data", type=Path,
                        help="lfw-deepfunneled folder, .bin file or identity folder; default: LFW from the cache")
    parser.add_argument("--protocol", choices=EVAL_PROTOCOLS, default="lfw-view1",
                        help="lfw-view1: LFW devtest pairs; bin: InsightFace .bin pairs; folder: pairs drawn "
                             "from held-out identities (default: %(default)s)")
    parser.add_argument("--vlr", type=int, nargs="+", action="extend", default=[], metavar="PX",
                        help="also score with images downscaled to PX pixels and upscaled back (7, 14, 28, 56)")
    parser.add_argument("--vlr-mode", choices=VLR_MODES, default="probe",
                        help="probe: degrade the second image of each pair; both: degrade both (default: %(default)s)")
    parser.add_argument("--no-flip", action="store_true", help="score without flip averaging only")
    parser.add_argument("--json", type=Path, help="write the scores to this JSON file")
    parser.add_argument("--align", choices=ALIGN_MODES, default="auto",
                        help="auto: MTCNN for images not already model-sized; mtcnn: always; none: resize only "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Keras inference batch (default: 64)")
    parser.add_argument("--threads", type=int, default=1, help="LCE interpreter threads for .tflite (default: 1)")
    parser.add_argument("--cache-dir", type=Path, help="aligned-crop cache folder (default: $BINARYFACE_CACHE/aligned)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folder protocol's split and pairs")
    parser.add_argument("--eval-fraction", type=float, default=0.25,
                        help="folder protocol: share of identities scored, as held out by training (default: 0.25)")
    parser.add_argument("--pair-order", choices=PAIR_ORDERS, default="balanced",
                        help="balanced: each tenth of the pairs (one fold) is half genuine; file: the pair "
                             "list's order, so LFW View 1 folds hold one class each (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or INFO logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if any(size < 1 for size in args.vlr):
            raise EvaluationError(f"--vlr sizes must be positive pixel counts, got {args.vlr}")
        embedder = load_embedder(args.model, weights=args.weights, batch_size=args.batch_size,
                                 num_threads=args.threads, progress=not args.quiet)
        data = load_eval_data(args.protocol, args.data, image_size=embedder.input_size, align=args.align,
                              cache_dir=args.cache_dir, seed=args.seed, eval_fraction=args.eval_fraction,
                              pair_order=args.pair_order, progress=not args.quiet)
        flip_modes = (False,) if args.no_flip else (False, True)
        report = evaluate_model(embedder, data, flip_modes=flip_modes, vlr_sizes=args.vlr,
                                vlr_mode=args.vlr_mode, seed=args.seed)
        if args.json is not None:
            document = report_to_json(
                report,
                model=str(args.model),
                weights=str(args.weights) if args.weights else None,
                data=data.source,
                protocol=data.protocol,
                skipped=data.skipped,
                alignment=None if data.alignment is None else {
                    **asdict(data.alignment),
                    "images_per_second": data.alignment.images_per_second,
                    "detector_images_per_second": data.alignment.detector_images_per_second,
                },
            )
            try:
                args.json.write_text(json.dumps(document, indent=2) + "\n")
            except OSError as error:
                raise EvaluationError(f"cannot write {args.json}: {error.strerror}") from error
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"model {args.model} on {data.source} ({data.protocol}: {report.n_pairs} pairs, "
          f"{report.n_genuine} genuine, {report.n_images} images)")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
