"""Verification accuracy of BinaryFaceNet on LFW View 1, at full and at very low resolution.

Goal: score the released BinaryFaceNet weights and the deployable BinaryFaceNet on the 1,000
LFW View-1 test pairs (``pairsDevTest.txt``), faces detected and aligned with MTCNN to the
112x112 ArcFace template, with 10-fold accuracy with and without flip averaging. The
reference for the released weights, measured the same way, is 93.9 % with flip and 92.9 %
without, and a reproduction should land within one point of it. The VLR variant
(``experiments/vlr.yaml``) degrades images with area interpolation to 7, 14 and 28 px and
back: one image of each pair (high-resolution gallery, VLR probe) or both.

Each model is scored where it runs: ``keras`` (TensorFlow, batches of 64) or ``lce`` (the
converted flatbuffer in LCE's interpreter, one image at a time, indirect BGEMM and XNNPACK).

Expected cost: alignment of the 1,549 test images takes about 4 minutes the first time on
a shared 2-core host (cached after that). A Keras model takes about 2 minutes per 3,098
embeddings and an LCE model about 10-30 s. The VLR variant embeds 3 to 6 times as many images.

Expected result: released weights at 93.9 % / 92.9 % (flip / no flip) within one point in
both runtimes (measured: 94.5 / 93.7 % in Keras, 93.9 / 93.2 % in LCE). The deployable model
lands within 3 points of them (measured: 94.0-94.1 % with flip). With VLR probes accuracy falls to
about 93 % at 28 px, 83 % at 14 px and 70 % at 7 px.

Commands (each writes runs/<name>/<time>/ and appends a section to experiments/RESULTS.md)::

    .venv/bin/python -m experiments.accuracy --config experiments/accuracy.yaml
    .venv/bin/python -m experiments.accuracy --config experiments/vlr.yaml
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import experiments  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from experiments._records import (
    experiment_main,
    ExperimentError,
    append_results,
    command_line,
    describe_machine,
    iso_date,
    load_config,
    machine_info,
    resolve_path,
    timestamp,
    write_outputs,
)

__all__ = ["SCHEMA", "build_model_entry", "load_pairs", "main", "run", "subset_pairs"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "accuracy.yaml"

# ``models`` is a list of mappings. A model is either ``released`` (a whole-model .h5 file)
# or a ``spec`` with ``weights`` (a Keras weights file), ``init: released`` (initialised by
# blocks.weights.init_from_released from ``released``) or ``init: random``.
SCHEMA: dict[str, Any] = {
    "title": "",
    "models": [],
    "data": {
        "root": "../shared/data/lfw/lfw-deepfunneled",
        "protocol": "lfw-view1",
        "align": "auto",
        "cache_dir": None,
        "max_pairs": None,
    },
    "evaluation": {"flip_modes": [False, True], "vlr_sizes": [], "vlr_modes": ["probe"], "n_folds": 10},
    "output": {"folder": "runs/accuracy"},
}
MODEL_KEYS = {"name", "released", "spec", "weights", "init", "runtime", "reference"}
RUNTIMES = ("keras", "lce")
QUICK_PAIRS = 40
# Relative difference between LCE and Keras embeddings above which the LCE run is flagged.
CHECK_TOLERANCE = 1e-2


def build_model_entry(entry: Mapping[str, Any]) -> Any:
    """Return the Keras model a ``models`` entry describes."""
    from blocks.weights import init_from_released, load_released_model

    if "spec" not in entry:
        return load_released_model(resolve_path(entry["released"]))

    from blocks.build import build_model
    from blocks.spec import DeploymentWarning, load_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = load_spec(resolve_path(entry["spec"]))
    model = build_model(spec, seed=0)
    if entry.get("weights"):
        model.load_weights(str(resolve_path(entry["weights"])))
    elif entry.get("init") == "released":
        report = init_from_released(model, resolve_path(entry["released"]))
        logger.info("%s: %s", entry["name"], report.summary())
    return model


def embedder_for(model: Any, runtime: str, check_images: np.ndarray | None = None) -> Any:
    """Return the embedder that runs ``model`` in ``runtime`` (keras or lce), remembering results.

    Each VLR mode embeds the full-resolution images again, so the memo returns the embeddings
    of an image batch seen before instead of recomputing them. An ``lce`` embedder is checked
    against Keras on ``check_images``, and a difference is logged as a warning. LCE 0.16's
    XNNPACK delegate computes a float conv with "same" padding wrong when its stride exceeds
    its kernel (3x3 with stride 4 on 112 px); ``search.evaluate.tflite_embedder`` then runs
    without XNNPACK, and this check confirms the result.
    """
    from search.evaluate import keras_embedder, tflite_embedder

    if runtime == "keras":
        embedder = keras_embedder(model, batch_size=64)
    else:
        from blocks.convert import convert_model

        flatbuffer, _ = convert_model(model)
        embedder = tflite_embedder(flatbuffer)
        if check_images is not None and len(check_images):
            expected = keras_embedder(model, batch_size=len(check_images))(check_images)
            difference = float(np.abs(embedder(check_images) - expected).max() / max(np.abs(expected).max(), 1e-12))
            level = logging.WARNING if difference > CHECK_TOLERANCE else logging.INFO
            logger.log(level, "%s: LCE embeddings differ from Keras by %.3g (relative) on %d images",
                       model.name, difference, len(check_images))
    memo: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}

    def embed(images: np.ndarray) -> np.ndarray:
        key = (images.shape, hashlib.sha1(np.ascontiguousarray(images).tobytes()).digest())
        if key not in memo:
            memo[key] = embedder(images)
        return memo[key]

    return embed


def subset_pairs(images: np.ndarray, pairs: np.ndarray, issame: np.ndarray, n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep ``n_pairs`` pairs, genuine and impostor alternating, and only the images they use."""
    genuine = np.flatnonzero(issame)[: n_pairs - n_pairs // 2]
    impostor = np.flatnonzero(~issame)[: n_pairs // 2]
    order = np.empty(len(genuine) + len(impostor), dtype=np.int64)
    order[0 : 2 * len(impostor) : 2] = impostor
    order[1 : 2 * len(impostor) : 2] = genuine[: len(impostor)]
    order[2 * len(impostor) :] = genuine[len(impostor) :]
    pairs, issame = pairs[order], issame[order]
    used = np.unique(pairs)
    position = np.full(len(images), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    return images[used], position[pairs], issame


def load_pairs(data: Mapping[str, Any], *, quick: bool = False) -> Any:
    """Load the evaluation pairs of the ``data`` section as ``search.evaluate.EvalData``."""
    from search.evaluate import EvalData, load_eval_data

    root = resolve_path(data["root"])
    if root is None or not root.is_dir():
        raise ExperimentError(f"data.root not found: {root} (a folder of identity folders, such as LFW's)")
    eval_data = load_eval_data(
        data["protocol"],
        root,
        align=data["align"],
        cache_dir=resolve_path(data["cache_dir"]),
        eval_fraction=1.0,
        progress=False,
    )
    max_pairs = QUICK_PAIRS if quick and data["max_pairs"] is None else data["max_pairs"]
    if max_pairs is not None and max_pairs < len(eval_data.pairs):
        images, pairs, issame = subset_pairs(eval_data.images, eval_data.pairs, eval_data.issame, max_pairs)
        eval_data = EvalData(images=images, pairs=pairs, issame=issame, protocol=eval_data.protocol, source=eval_data.source)
    logger.info("%d pairs (%d genuine) over %d images from %s", len(eval_data.pairs), int(eval_data.issame.sum()),
                len(eval_data.images), root)
    return eval_data


def score_model(entry: Mapping[str, Any], eval_data: Any, evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Score one model on every setting of ``evaluation``; return its JSON-ready record."""
    from search.evaluate import evaluate_model

    started = time.perf_counter()
    model = build_model_entry(entry)
    embedder = embedder_for(model, entry.get("runtime", "keras"), check_images=eval_data.images[:4])
    rows: dict[str, dict[str, Any]] = {}
    for mode in evaluation["vlr_modes"]:
        report = evaluate_model(
            embedder,
            eval_data,
            flip_modes=evaluation["flip_modes"],
            vlr_sizes=evaluation["vlr_sizes"],
            vlr_mode=mode,
            n_folds=evaluation["n_folds"],
        )
        for row in report.rows:
            setting = "full resolution" if row.vlr_size is None else f"VLR {row.vlr_size} px, {_mode_name(row.vlr_mode)}"
            record = rows.setdefault(setting, {"vlr_size": row.vlr_size, "vlr_mode": row.vlr_mode})
            record["flip" if row.flip else "no_flip"] = {
                "accuracy": row.result.accuracy,
                "std": row.result.std,
                "auc": row.result.auc,
                "tar_at_far": {str(far): tar for far, tar in row.result.tar_at_far.items()},
            }
    seconds = time.perf_counter() - started
    full = rows.get("full resolution", {})
    logger.info(
        "%s (%s): full resolution %s / %s (flip / no flip) in %.0f s",
        entry["name"],
        entry.get("runtime", "keras"),
        _percent(full.get("flip")),
        _percent(full.get("no_flip")),
        seconds,
    )
    return {
        "name": entry["name"],
        "runtime": entry.get("runtime", "keras"),
        "source": {key: str(entry[key]) for key in ("released", "spec", "weights", "init") if entry.get(key)},
        "reference": entry.get("reference"),
        "settings": rows,
        "seconds": seconds,
    }


def _mode_name(mode: str | None) -> str:
    return "HR gallery vs VLR probe" if mode == "probe" else "VLR vs VLR"


def _percent(record: Mapping[str, Any] | None) -> str:
    return "-" if not record else f"{100 * record['accuracy']:.1f} %"


def _check_models(models: Any, source: str) -> None:
    if not isinstance(models, list) or not models:
        raise ExperimentError(f"{source}: section 'models' must list at least one model")
    for index, entry in enumerate(models):
        where = f"{source}: models[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ExperimentError(f"{where} must be a mapping with a 'name'")
        unknown = sorted(set(entry) - MODEL_KEYS)
        if unknown:
            raise ExperimentError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(MODEL_KEYS))}")
        if entry.get("runtime", "keras") not in RUNTIMES:
            raise ExperimentError(f"{where}.runtime must be one of {', '.join(RUNTIMES)}, got {entry['runtime']!r}")
        if "spec" not in entry and "released" not in entry:
            raise ExperimentError(f"{where} needs 'released' (a whole-model .h5) or 'spec'")
        if "spec" in entry:
            if entry.get("init") not in (None, "released", "random"):
                raise ExperimentError(f"{where}.init must be 'released' or 'random', got {entry['init']!r}")
            if not entry.get("weights") and entry.get("init") is None:
                raise ExperimentError(f"{where} needs 'weights' or 'init' (released or random) next to its spec")
        for key in ("released", "spec", "weights"):
            if key == "released" and "spec" in entry and entry.get("init") != "released":
                continue
            path = resolve_path(entry.get(key))
            if key in entry and (path is None or not path.is_file()):
                hint = " (run experiments.finetune_binaryfacenet to write it)" if key == "weights" else ""
                raise ExperimentError(f"{where}.{key} not found: {path}{hint}")


# ---------------------------------------------------------------------------------------
# Report.


def format_tables(document: Mapping[str, Any]) -> str:
    """Return one Markdown table per model set: accuracy per setting with and without flip."""
    lines = [
        "| model | runs in | setting | accuracy, flip | accuracy, no flip | reference (flip / no flip) |",
        "|---|---|---|---|---|---|",
    ]
    for model in document["models"]:
        reference = model.get("reference") or {}
        for setting, record in model["settings"].items():
            cell = "-"
            if setting == "full resolution" and reference:
                cell = f"{reference.get('flip', '-')} % / {reference.get('no_flip', '-')} %"
            lines.append(
                f"| {model['name']} | {model['runtime']} | {setting} | {_with_std(record.get('flip'))} "
                f"| {_with_std(record.get('no_flip'))} | {cell} |"
            )
    return "\n".join(lines)


def _with_std(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "-"
    return f"{100 * record['accuracy']:.2f} ± {100 * record['std']:.2f} %"


def record_section(document: Mapping[str, Any], command: str) -> str:
    """Return the RESULTS.md section: heading, command, machine, data and table."""
    data = document["data"]
    return "\n".join(
        [
            f"## {document['title']} ({iso_date(document['finished_at'])})",
            "",
            f"Command: `{command}`",
            "",
            describe_machine(document["machine"]),
            f"Data: {data['n_pairs']} pairs ({data['n_genuine']} genuine) over {data['n_images']} images, protocol "
            f"`{data['protocol']}`, alignment `{data['align']}`; {document['evaluation']['n_folds']}-fold accuracy "
            "(mean ± standard deviation over folds), cosine similarity of L2-normalised embeddings; flip sums each "
            "embedding with its mirror image's.",
            "",
            format_tables(document),
        ]
    )


def run(config_path: Path, *, quick: bool = False, record: bool = True, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run the experiment from a config file; return the document that was written."""
    config = load_config(config_path, SCHEMA)
    _check_models(config["models"], str(config_path))
    evaluation = config["evaluation"]
    for mode in evaluation["vlr_modes"]:
        if mode not in ("probe", "both"):
            raise ExperimentError(f"{config_path}: evaluation.vlr_modes must list 'probe' and/or 'both', got {mode!r}")
    title = config["title"] or "LFW View 1 verification accuracy"
    logger.info("%s: %d models, evaluation %s", title, len(config["models"]), evaluation)

    eval_data = load_pairs(config["data"], quick=quick)
    models = [score_model(entry, eval_data, evaluation) for entry in config["models"]]
    command = command_line("experiments.accuracy", argv)
    document = {
        "experiment": "accuracy",
        "title": title,
        "config": str(config_path),
        "command": command,
        "finished_at": timestamp(),
        "machine": machine_info(),
        "data": {
            **config["data"],
            "n_pairs": int(len(eval_data.pairs)),
            "n_genuine": int(eval_data.issame.sum()),
            "n_images": int(len(eval_data.images)),
        },
        "evaluation": evaluation,
        "models": models,
    }

    folder = resolve_path(config["output"]["folder"]) / timestamp()
    markdown = record_section(document, command)
    json_path, markdown_path = write_outputs(folder, "accuracy", document, markdown)
    document["outputs"] = {"json": str(json_path), "markdown": str(markdown_path)}
    if record and not quick:
        append_results(markdown)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    return experiment_main(
        argv,
        prog="python -m experiments.accuracy",
        description="Score BinaryFaceNet models on LFW View 1 pairs, at full and very low resolution.",
        quick_help=f"first {QUICK_PAIRS} pairs only, no RESULTS.md section",
        default_config=DEFAULT_CONFIG,
        run=run,
        report=lambda document: f"{format_tables(document)}\n\nwrote {document['outputs']['json']} and {document['outputs']['markdown']}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
