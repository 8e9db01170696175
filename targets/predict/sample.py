"""Random candidates of a search space, converted with LCE and cached as flatbuffers.

This is the one module of `targets` that reaches into `blocks` and `search`: fitting a
latency table needs models to measure, and the models come from a search space. It imports
them only when called, so the predictor itself stays free of TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Candidate", "convert_candidates", "sample_params"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One converted candidate: its parameters and where its flatbuffer is cached."""

    name: str
    params: dict[str, Any]
    path: Path
    convert_s: float

    def flatbuffer(self) -> bytes:
        """Read the cached flatbuffer."""
        return self.path.read_bytes()


def sample_params(space: Any, count: int, *, seed: int, exclude: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Draw ``count`` distinct parameter sets of ``space`` uniformly at random.

    Sets in ``exclude`` are never drawn. Raises `ValueError` when the space has fewer
    distinct sets than requested.
    """
    seen = {_params_key(params) for params in exclude}
    available = space.size() - len(seen)
    if count > available:
        raise ValueError(f"cannot draw {count} distinct candidates: the space has {available:g} left after exclusions")
    generator = random.Random(seed)
    drawn: list[dict[str, Any]] = []
    while len(drawn) < count:
        params = {dimension.path: generator.choice(dimension.values()) for dimension in space.dimensions}
        key = _params_key(params)
        if key in seen:
            continue
        seen.add(key)
        drawn.append(params)
    return drawn


def convert_candidates(
    space: Any,
    params_list: Sequence[dict[str, Any]],
    cache_dir: Path,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[Candidate]:
    """Build and convert each parameter set of ``space``, reusing flatbuffers cached in ``cache_dir``.

    A candidate whose spec is invalid or whose conversion fails is logged and left out, and
    the failure is cached too, so the result may be shorter than ``params_list``. The
    cache key covers the base spec, the parameters and ``seed``. Conversion takes about
    5 to 60 s per candidate on a shared two-core x86 host.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    base_yaml = space.base.to_yaml()
    candidates: list[Candidate] = []
    iterator: Iterable[dict[str, Any]] = params_list
    if progress:
        from tqdm import tqdm

        iterator = tqdm(params_list, desc="convert", unit="model")
    for params in iterator:
        key = hashlib.sha256(f"{base_yaml}\n{_params_key(params)}\nseed={seed}".encode()).hexdigest()[:16]
        name = f"{space.name}_{key}"
        model_path = cache_dir / f"{name}.tflite"
        record_path = cache_dir / f"{name}.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("error"):
                logger.debug("%s: cached failure: %s", name, record["error"])
                continue
            if model_path.is_file():
                candidates.append(Candidate(name, dict(params), model_path, float(record.get("convert_s", 0.0))))
                continue

        record = _convert_one(space, params, name, model_path, seed)
        record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
        if record.get("error"):
            logger.warning("%s: left out: %s", name, record["error"])
            continue
        candidates.append(Candidate(name, dict(params), model_path, record["convert_s"]))
    return candidates


def _convert_one(space: Any, params: dict[str, Any], name: str, model_path: Path, seed: int) -> dict[str, Any]:
    from blocks.build import build_model
    from blocks.convert import convert_model
    from blocks.errors import BinaryFaceError
    from blocks.spec import DeploymentWarning

    record: dict[str, Any] = {"name": name, "params": params, "seed": seed}
    began = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeploymentWarning)
            spec = space.spec_for(params, name=name)
        model = build_model(spec, seed=seed)
        flatbuffer, messages = convert_model(model)
    except BinaryFaceError as error:
        record["error"] = f"{type(error).__name__}: {error}"
        return record
    finally:
        _clear_keras_session()
    temporary = model_path.with_suffix(".tflite.tmp")
    temporary.write_bytes(flatbuffer)
    temporary.replace(model_path)
    record.update(convert_s=round(time.monotonic() - began, 3), converter_messages=messages, bytes=len(flatbuffer))
    return record


def _clear_keras_session() -> None:
    # Each built model leaves graph state behind; a few hundred of them exhaust memory.
    import tensorflow as tf

    tf.keras.backend.clear_session()


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
