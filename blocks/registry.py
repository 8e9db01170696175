"""Registry of block primitives: one decorator, one snake_case name per block.

A block is a function ``fn(x, *, name, **hyperparameters) -> tensor``. Its keyword-only
arguments, with their annotations and defaults, are the block's YAML keys; a key without a
default is required. Each block also has a shape function that maps an input shape
``(height, width, channels)`` and the hyperparameters to the output shape without
TensorFlow, so that a spec is validated completely before anything is built.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["BlockDef", "Param", "ShapeContext", "register_block", "get_block", "list_blocks"]

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a block: its YAML key, type and default."""

    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass
class ShapeContext:
    """Side channel of a shape function for reports other than the output shape.

    ``warnings`` collects ``(key, message)`` pairs for settings that are legal but will not
    deploy as the spec declares (for example a 1-bit layer that LCE runs in float).
    """

    warnings: list[tuple[str, str]] = field(default_factory=list)

    def warn(self, key: str, message: str) -> None:
        if (key, message) not in self.warnings:
            self.warnings.append((key, message))


@dataclass(frozen=True)
class BlockDef:
    """A registered block: builder function, hyperparameter schema and shape function."""

    name: str
    fn: Callable[..., Any]
    shape: Callable[..., Shape]
    params: dict[str, Param]
    doc: str


_REGISTRY: dict[str, BlockDef] = {}


def register_block(name: str, *, shape: Callable[..., Shape]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name``; its keyword-only arguments become the block's keys.

    ``shape(input_shape, context, **hyperparameters) -> output_shape`` must raise
    ``ValueError(key, message)`` for an impossible configuration.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"block {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
        hints = typing.get_type_hints(fn)
        params = {}
        for parameter in inspect.signature(fn).parameters.values():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name == "name":
                continue
            params[parameter.name] = Param(parameter.name, hints.get(parameter.name, Any), parameter.default)
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = BlockDef(name, fn, shape, params, doc.splitlines()[0] if doc else "")
        return fn

    return decorator


def get_block(name: str) -> BlockDef:
    """Return the block registered as ``name``; raise ``ValueError`` listing the known ones."""
    _load_builtin_blocks()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown block {name!r}; known blocks: {known}") from None


def list_blocks() -> list[str]:
    """Return the names of all registered blocks, sorted."""
    _load_builtin_blocks()
    return sorted(_REGISTRY)


def _load_builtin_blocks() -> None:
    # Importing the modules runs their decorators; none of them imports TensorFlow.
    from blocks import baselines, primitives  # noqa: F401
