"""Search spaces: which keys of a base spec a study varies, and over which values.

A space is YAML::

    name: binaryfacenet
    base_spec: blocks/specs/binaryfacenet.yaml
    params:
      lfe.filters: {choices: [32, 64, 96]}
      lfe.repeats: {low: 1, high: 3}
      head.se_ratio: {choices: [8, 16]}

Each parameter name is the ``<block name>.<key>`` path of the spec key it fills, so a
trial's parameters write back into the spec unchanged. ``base_spec`` is resolved against the
space file's folder, then against the project root.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from blocks.errors import SpecError
from blocks.spec import DeploymentWarning, Spec, load_spec

__all__ = ["Dimension", "SearchSpace", "load_space"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_TOP_KEYS = {"name", "description", "base_spec", "params"}


@dataclass(frozen=True)
class Dimension:
    """One searched key: categorical ``choices`` or an integer range ``low..high`` (with ``step``)."""

    path: str
    choices: tuple[Any, ...] = ()
    low: int | None = None
    high: int | None = None
    step: int = 1
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """Return this dimension's value for an Optuna ``trial``; the name is the spec path."""
        if self.choices:
            return trial.suggest_categorical(self.path, list(self.choices))
        return trial.suggest_int(self.path, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """Return every value of the dimension."""
        if self.choices:
            return list(self.choices)
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class SearchSpace:
    """A base spec and the dimensions a study varies."""

    name: str
    base: Spec
    dimensions: tuple[Dimension, ...]
    source: str = ""
    description: str = ""

    def spec_for(self, params: dict[str, Any], *, name: str | None = None) -> Spec:
        """Return the validated base spec with ``params`` written in (raises ``SpecError``).

        The description starts with the candidate's values, because the base spec's own
        description is about the base.
        """
        spec = self.base.with_params(params, name=name)
        values = ", ".join(f"{key}={value}" for key, value in params.items())
        described = f"A candidate of search space {self.name!r}: {values}."
        if spec.description:
            described += f" The base spec: {spec.description}"
        return dataclasses.replace(spec, description=described)

    def size(self) -> float:
        """Return the number of distinct candidates (before validity checks)."""
        return math.prod(len(dimension.values()) for dimension in self.dimensions)


def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a search space; every dimension must name a settable spec key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SpecError(f"cannot read search space: {error.strerror}", source=str(path)) from error
    except yaml.YAMLError as error:
        raise SpecError(f"invalid YAML: {error}", source=str(path)) from error

    if not isinstance(data, dict):
        raise SpecError("a search space must be a mapping with keys base_spec and params", source=str(path))
    for key in data:
        if key not in _TOP_KEYS:
            raise SpecError(f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}", str(key), source=str(path))
    for key in ("base_spec", "params"):
        if key not in data:
            raise SpecError(f"missing required key {key!r}", source=str(path))
    if not isinstance(data["params"], dict) or not data["params"]:
        raise SpecError("must map at least one spec path to its values", "params", source=str(path))

    base_path = _resolve(path, data["base_spec"])
    base = load_spec(base_path)
    dimensions = tuple(_dimension(name, value, str(path)) for name, value in data["params"].items())
    for dimension in dimensions:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeploymentWarning)
                base.with_params({dimension.path: dimension.values()[0]})
        except SpecError as error:
            if "parameter path" in error.message or "not set" in error.message or "unknown key" in error.message:
                raise SpecError(f"does not name a key of spec {base.name!r}: {error.message}", f"params.{dimension.path}", source=str(path)) from None
    return SearchSpace(
        name=str(data.get("name", path.stem)),
        base=base,
        dimensions=dimensions,
        source=str(path),
        description=str(data.get("description", "")),
    )


def _resolve(space_path: Path, base: Any) -> Path:
    if not isinstance(base, str):
        raise SpecError(f"must be a path string, got {base!r}", "base_spec", source=str(space_path))
    for candidate in (space_path.parent / base, PROJECT_ROOT / base, Path(base)):
        if candidate.is_file():
            return candidate
    raise SpecError(f"spec file {base!r} not found next to the space or in the project", "base_spec", source=str(space_path))


def _dimension(name: Any, value: Any, source: str) -> Dimension:
    path = f"params.{name}"
    if not isinstance(name, str) or "." not in name:
        raise SpecError("a parameter name must be a '<block name>.<key>' spec path", path, source=source)
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        raise SpecError(f"must be a list of choices or a mapping with choices or low/high, got {value!r}", path, source=source)
    unknown = set(value) - {"choices", "low", "high", "step", "log"}
    if unknown:
        raise SpecError(f"unknown key {sorted(unknown)[0]!r}; allowed: choices, low, high, step, log", path, source=source)
    if "choices" in value:
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError("choices must be a non-empty list", path, source=source)
        return Dimension(name, choices=tuple(_freeze(choice) for choice in choices))
    low, high = value.get("low"), value.get("high")
    if not isinstance(low, int) or not isinstance(high, int) or low > high:
        raise SpecError(f"an integer range needs integers low <= high, got low={low!r} high={high!r}", path, source=source)
    step = value.get("step", 1)
    if not isinstance(step, int) or step <= 0:
        raise SpecError(f"step must be a positive integer, got {step!r}", path, source=source)
    return Dimension(name, low=low, high=high, step=step, log=bool(value.get("log", False)))


def _freeze(value: Any) -> Any:
    # Optuna's categorical choices must be None, bool, int, float or str.
    if isinstance(value, (list, dict)):
        raise SpecError(f"a choice must be a scalar (number, string, bool or null), got {value!r}")
    return value
