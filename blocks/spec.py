"""Block specs: YAML documents that describe a network as a sequence of registered blocks.

A spec is plain data and is validated completely (keys, types, shapes) before TensorFlow is
imported. Example::

    name: tiny
    input_shape: [112, 112, 3]
    blocks:
      - block: conv_unit
        name: stem
        filters: 32
        kernel_size: 3
        strides: 2

Every error is a :class:`~blocks.errors.SpecError` that names the key path
(``blocks[0].kernel_size``) and the YAML line.
"""

from __future__ import annotations

import copy
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from blocks.errors import SpecError, SpecTypeError
from blocks.registry import ShapeContext, get_block, list_blocks

__all__ = [
    "BlockSpec",
    "DeploymentWarning",
    "Spec",
    "check_value",
    "load_spec",
    "parse_spec",
]

_TOP_KEYS = {"name": str, "description": str, "input_shape": list, "blocks": list}
_REQUIRED_TOP = ("name", "input_shape", "blocks")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class DeploymentWarning(UserWarning):
    """A legal setting that LCE will not deploy as declared (for example 1-bit run in float)."""


@dataclass(frozen=True)
class BlockSpec:
    """One block of a spec: registry name, unique instance name and the keys given in YAML."""

    block: str
    name: str
    params: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        """Return the hyperparameters with the block's defaults filled in."""
        definition = get_block(self.block)
        values = {key: param.default for key, param in definition.params.items() if not param.required}
        values.update(copy.deepcopy(self.params))
        return values


@dataclass(frozen=True)
class Spec:
    """A validated network spec.

    ``shapes`` holds the inferred output shape ``(height, width, channels)`` of each block and
    ``warnings`` the deployment warnings found while validating. ``source`` is the file the
    spec was read from; like ``warnings`` it takes no part in equality, so a spec equals its
    YAML round trip.
    """

    name: str
    input_shape: tuple[int, int, int]
    blocks: tuple[BlockSpec, ...]
    description: str = ""
    source: str = field(default="", compare=False)
    shapes: tuple[tuple[int, int, int], ...] = ()
    warnings: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as the plain data it was loaded from."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["input_shape"] = list(self.input_shape)
        data["blocks"] = [
            {"block": block.block, "name": block.name, **copy.deepcopy(block.params)} for block in self.blocks
        ]
        return data

    def to_yaml(self) -> str:
        """Return the spec as YAML; ``parse_spec(spec.to_yaml())`` gives an equal spec."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def block(self, name: str) -> BlockSpec:
        """Return the block named ``name``."""
        for block in self.blocks:
            if block.name == name:
                return block
        known = ", ".join(block.name for block in self.blocks)
        raise KeyError(f"spec {self.name!r} has no block named {name!r}; blocks: {known}")

    def with_params(self, params: Mapping[str, Any], *, name: str | None = None) -> Spec:
        """Return a new validated spec with ``params`` set.

        Keys are ``<block name>.<key>`` paths as search spaces use them, for example
        ``lfe.filters`` or ``head.reduction[0].groups``.
        """
        data = self.to_dict()
        if name is not None:
            data["name"] = name
        by_name = {block["name"]: block for block in data["blocks"]}
        for path, value in params.items():
            block_name, _, rest = path.partition(".")
            if block_name not in by_name or not rest:
                known = ", ".join(by_name)
                raise SpecError(f"parameter path must be '<block name>.<key>' with a block among: {known}", path)
            _set_path(by_name[block_name], rest, value, path)
        try:
            return parse_spec(yaml.safe_dump(data, sort_keys=False), source=self.source)
        except SpecError as error:
            # Line numbers of the regenerated YAML would point into the wrong text of the source file.
            message = f"{error.message} (after setting {', '.join(params)})"
            raise type(error)(message, error.path, None, self.source) from error


def load_spec(path: str | Path) -> Spec:
    """Load and validate the spec YAML at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"cannot read spec file: {error.strerror}", source=str(path)) from error
    return parse_spec(text, source=str(path))


def parse_spec(text: str, *, source: str = "") -> Spec:
    """Parse and validate a spec from YAML text; raise ``SpecError`` on the first problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(f"invalid YAML: {getattr(error, 'problem', error)}", line=line, source=source) from error
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines, source)
    return _Validator(lines, source).spec(data)


def check_value(value: Any, annotation: Any, path: str) -> None:
    """Raise ``TypeError`` naming ``path`` when ``value`` does not match ``annotation``."""
    if not _matches(value, annotation):
        raise TypeError(f"{path} must be {_describe(annotation)}, got {type(value).__name__} {value!r}")


class _Validator:
    def __init__(self, lines: dict[str, int], source: str) -> None:
        self.lines = lines
        self.source = source

    def error(self, message: str, path: str) -> SpecError:
        return SpecError(message, path, self._line(path), self.source)

    def _line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", path)
        return self.lines.get("")

    def spec(self, data: Any) -> Spec:
        if not isinstance(data, dict):
            raise self.error(f"a spec must be a mapping with keys {', '.join(_REQUIRED_TOP)}", "")
        for key in data:
            if key not in _TOP_KEYS:
                raise self.error(f"unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}", str(key))
        for key in _REQUIRED_TOP:
            if key not in data:
                raise self.error(f"missing required key {key!r}", "")
        for key, kind in _TOP_KEYS.items():
            if key in data and not isinstance(data[key], kind):
                message = f"must be a {kind.__name__}, got {type(data[key]).__name__}"
                raise SpecTypeError(message, key, self._line(key), self.source)

        input_shape = data["input_shape"]
        if len(input_shape) != 3 or not all(_is_int(v) and v > 0 for v in input_shape):
            raise self.error(f"must be [height, width, channels] of positive integers, got {input_shape}", "input_shape")
        if not data["blocks"]:
            raise self.error("must list at least one block", "blocks")

        blocks = []
        shapes = []
        context = ShapeContext()
        shape = tuple(input_shape)
        seen: set[str] = set()
        for index, entry in enumerate(data["blocks"]):
            block = self.block(entry, index, seen)
            if blocks and blocks[-1].block == "output_head":
                message = f"block {block.name!r} follows output head {blocks[-1].name!r}, which flattens the map; the output head must be last"
                raise self.error(message, f"blocks[{index}]")
            shape = self.infer_shape(block, index, shape, context)
            blocks.append(block)
            shapes.append(shape)

        spec = Spec(
            name=data["name"],
            input_shape=tuple(input_shape),
            blocks=tuple(blocks),
            description=data.get("description", ""),
            source=self.source,
            shapes=tuple(shapes),
            warnings=tuple(context.warnings),
        )
        for path, message in context.warnings:
            warnings.warn(f"{self.source or spec.name}: {path}: {message}", DeploymentWarning, stacklevel=3)
        return spec

    def block(self, entry: Any, index: int, seen: set[str]) -> BlockSpec:
        path = f"blocks[{index}]"
        if not isinstance(entry, dict):
            raise self.error(f"must be a mapping with a 'block' key, got {type(entry).__name__}", path)
        if "block" not in entry:
            raise self.error(f"missing required key 'block' (one of: {', '.join(list_blocks())})", path)
        if not isinstance(entry["block"], str):
            message = f"must be a block name (a string), got {type(entry['block']).__name__} {entry['block']!r}"
            raise SpecTypeError(message, f"{path}.block", self._line(f"{path}.block"), self.source)
        try:
            definition = get_block(entry["block"])
        except ValueError as error:
            raise self.error(str(error), f"{path}.block") from None

        name = entry.get("name", entry["block"] if entry["block"] not in seen else f"{entry['block']}_{index}")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.error(f"must be a snake_case identifier, got {name!r}", f"{path}.name")
        if name in seen:
            raise self.error(f"duplicate block name {name!r}; give each block a unique 'name'", f"{path}.name")
        seen.add(name)

        params = {key: value for key, value in entry.items() if key not in ("block", "name")}
        for key, value in params.items():
            if key not in definition.params:
                allowed = ", ".join(definition.params)
                raise self.error(f"unknown key {key!r} for block {definition.name!r}; allowed: {allowed}", f"{path}.{key}")
            annotation = definition.params[key].annotation
            if not _matches(value, annotation):
                message = f"must be {_describe(annotation)}, got {type(value).__name__} {value!r}"
                raise SpecTypeError(message, f"{path}.{key}", self._line(f"{path}.{key}"), self.source)
        for key, param in definition.params.items():
            if param.required and key not in params:
                raise self.error(f"missing required key {key!r} for block {definition.name!r}", path)
        return BlockSpec(entry["block"], name, params)

    def infer_shape(self, block: BlockSpec, index: int, shape: tuple, context: ShapeContext) -> tuple[int, int, int]:
        definition = get_block(block.block)
        local = ShapeContext()
        try:
            output = definition.shape(shape, local, **block.resolved())
        except ValueError as error:
            key, message = error.args if len(error.args) == 2 else ("", str(error))
            path = f"blocks[{index}].{key}" if key else f"blocks[{index}]"
            raise self.error(f"{message} (block {block.name!r}, input {_format_shape(shape)})", path) from None
        for key, message in local.warnings:
            context.warn(f"blocks[{index}].{key}" if key else f"blocks[{index}]", f"{message} (block {block.name!r})")
        return tuple(int(v) for v in output)


def _format_shape(shape: tuple) -> str:
    return "x".join(str(v) for v in shape)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value) if args else isinstance(value, list)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()) if args else True
    if annotation is type(None):
        return value is None
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return (isinstance(value, (int, float))) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    return f"{'an' if annotation.__name__[0] in 'aeiou' else 'a'} {annotation.__name__}"


def _record_lines(node: yaml.Node, path: str, lines: dict[str, int], source: str) -> None:
    """Record the line of every key path; raise ``SpecError`` on a repeated mapping key.

    PyYAML keeps the last of two equal keys without a word, which would ignore a setting.
    """
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            line = key_node.start_mark.line + 1
            if child in first_lines:
                message = f"duplicate key {key_node.value!r} (first set on line {first_lines[child]}); remove one of them"
                raise SpecError(message, child, line, source)
            first_lines[child] = line
            lines[child] = line
            _record_lines(value_node, child, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines, source)


def _set_path(target: dict[str, Any], path: str, value: Any, full_path: str) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    current: Any = target
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(current, list):
                raise SpecError(f"cannot index {_describe(type(current))} with [{index}]", full_path)
            if index >= len(current):
                raise SpecError(f"index {index} is out of range for a list of {len(current)}", full_path)
            if last:
                current[index] = value
            else:
                current = current[index]
            continue
        if not isinstance(current, dict):
            raise SpecError(f"cannot set key {part!r} inside {_describe(type(current))}", full_path)
        if last:
            current[part] = value
        else:
            if part not in current:
                block = get_block(target["block"])
                if position == 0 and part in block.params and not block.params[part].required:
                    current[part] = copy.deepcopy(block.params[part].default)
                else:
                    raise SpecError(f"key {part!r} is not set in the spec", full_path)
            current = current[part]
