"""Block registry: registration rules, lookup errors and the schema taken from signatures."""

from __future__ import annotations

import inspect
import re
from typing import Any, Literal

import pytest

from blocks import registry
from blocks.registry import ShapeContext, get_block, list_blocks, register_block


def passthrough_shape(shape: tuple[int, int, int], context: ShapeContext, **params: Any) -> tuple[int, int, int]:
    return shape


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, registry.BlockDef]:
    """A copy of the registry that test registrations write to, so they do not leak."""
    list_blocks()
    copy = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", copy)
    return copy


def test_list_blocks_is_sorted() -> None:
    names = list_blocks()
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_list_blocks_has_builtin_blocks() -> None:
    names = set(list_blocks())
    for name in ("conv_unit", "downsample", "se_reduction_head", "gfe", "lfe", "embedding", "output_head"):
        assert name in names, f"{name} is not registered"


@pytest.mark.parametrize("name", list_blocks())
def test_block_names_are_snake_case(name: str) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name)


@pytest.mark.parametrize("name", list_blocks())
def test_block_has_summary_line(name: str) -> None:
    assert get_block(name).doc, f"block {name!r} has no docstring summary"


@pytest.mark.parametrize("name", list_blocks())
def test_block_params_exclude_name(name: str) -> None:
    assert "name" not in get_block(name).params


def test_get_block_returns_definition() -> None:
    definition = get_block("conv_unit")
    assert definition.name == "conv_unit"
    assert definition.fn.__name__ == "conv_unit"


def test_unknown_block_lists_known() -> None:
    known = ", ".join(list_blocks())
    with pytest.raises(ValueError, match=re.escape(f"unknown block 'conv_uint'; known blocks: {known}")):
        get_block("conv_uint")


def test_duplicate_registration_raises(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def other_conv_unit(x: Any, *, name: str, filters: int) -> Any:
        """A second block under a taken name."""
        return x

    original = scratch_registry["conv_unit"]
    with pytest.raises(ValueError, match=r"block 'conv_unit' is already registered \(by blocks\.primitives\)"):
        register_block("conv_unit", shape=passthrough_shape)(other_conv_unit)
    assert scratch_registry["conv_unit"] is original


def test_duplicate_registration_of_new_block(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def first(x: Any, *, name: str) -> Any:
        """First registration."""
        return x

    register_block("scratch_block", shape=passthrough_shape)(first)
    with pytest.raises(ValueError, match=r"block 'scratch_block' is already registered \(by (tests\.)?test_registry\)"):
        register_block("scratch_block", shape=passthrough_shape)(first)


def test_registration_returns_function(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def block(x: Any, *, name: str) -> Any:
        """Identity."""
        return x

    assert register_block("scratch_identity", shape=passthrough_shape)(block) is block


def test_schema_from_keyword_only_args(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def scratch(
        x: Any,
        positional: int = 3,
        *,
        name: str,
        filters: int,
        padding: Literal["same", "valid"] = "same",
        bits: int = 1,
    ) -> Any:
        """Scratch block for the schema test.

        Only the first line becomes the registry's summary.
        """
        return x

    register_block("scratch_schema", shape=passthrough_shape)(scratch)
    definition = get_block("scratch_schema")

    assert list(definition.params) == ["filters", "padding", "bits"]
    assert definition.params["filters"].required
    assert definition.params["filters"].annotation is int
    assert not definition.params["padding"].required
    assert definition.params["padding"].annotation == Literal["same", "valid"]
    assert definition.params["bits"].default == 1
    assert definition.doc == "Scratch block for the schema test."
    assert definition.shape is passthrough_shape


def test_schema_of_unannotated_arg_is_any(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def loose(x, *, name, width=4):  # type: ignore[no-untyped-def]
        return x

    register_block("scratch_loose", shape=passthrough_shape)(loose)
    definition = get_block("scratch_loose")

    assert definition.params["width"].annotation is Any
    assert definition.params["width"].default == 4
    assert definition.doc == ""


def test_registered_block_is_listed(scratch_registry: dict[str, registry.BlockDef]) -> None:
    def block(x: Any, *, name: str) -> Any:
        """Identity."""
        return x

    register_block("aaa_scratch", shape=passthrough_shape)(block)
    assert list_blocks()[0] == "aaa_scratch"


def test_param_required_flag() -> None:
    assert registry.Param("filters", int).required
    assert not registry.Param("bits", int, 1).required
    assert not registry.Param("quantizer", Any, None).required
    assert registry.Param("filters", int).default is inspect.Parameter.empty


def test_shape_context_deduplicates_warnings() -> None:
    context = ShapeContext()
    context.warn("groups", "runs in float")
    context.warn("groups", "runs in float")
    context.warn("bits", "runs in float")
    assert context.warnings == [("groups", "runs in float"), ("bits", "runs in float")]


@pytest.mark.parametrize("name", list_blocks())
def test_block_defaults_are_valid(name: str) -> None:
    from blocks.spec import check_value

    for key, param in get_block(name).params.items():
        if not param.required:
            check_value(param.default, param.annotation, f"{name}.{key}")


def test_check_value_names_path() -> None:
    from blocks.spec import check_value

    with pytest.raises(TypeError, match=re.escape("lfe.filters must be an int, got str '64'")):
        check_value("64", int, "lfe.filters")
