"""Target kinds by name, and `get_target`, which builds a target from a short spec string."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from targets.base import Target

__all__ = ["get_target", "list_target_kinds", "register_target_kind"]

# A factory receives the text after ``KIND:`` ("" when there is none) and the overrides.
TargetFactory = Callable[..., Target]

# Values are factories or lazy "module:attribute" references, so that naming a kind does not
# import TensorFlow (local) or paramiko (ssh) until a target of that kind is built.
_KINDS: dict[str, TargetFactory | str] = {}


def register_target_kind(kind: str, factory: TargetFactory | str) -> None:
    """Register ``factory`` under ``kind`` (``"predict"`` for ``"predict:NAME"`` specs).

    ``factory`` is called as ``factory(argument, **overrides)`` where ``argument`` is the
    text after ``KIND:``. It may also be a ``"package.module:attribute"`` string that is
    imported on first use. A duplicate kind raises `ValueError`.
    """
    if not kind or not kind.replace("-", "_").isidentifier():
        raise ValueError(f"target kind must be a word such as 'local' or 'ssh', got {kind!r}")
    if kind in _KINDS:
        raise ValueError(f"target kind {kind!r} is already registered; pick another name")
    _KINDS[kind] = factory


def list_target_kinds() -> list[str]:
    """Return the registered kinds, sorted."""
    return sorted(_KINDS)


def _resolve(kind: str) -> TargetFactory:
    factory = _KINDS[kind]
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        _KINDS[kind] = factory
    return factory


def get_target(spec: str = "local", **overrides: Any) -> Target:
    """Build the target that ``spec`` names.

    Args:
        spec: ``"local"`` (LCE's interpreter on this host), ``"ssh:PATH.yaml"`` (a board
            described by a device file), ``"predict:NAME"`` (latency predicted from the table
            ``targets/profiles/NAME.json``, see `targets.predict`), ``"KIND:ARGUMENT"`` for
            any registered kind, or a bare device name (``"jetson-nano"`` reads
            ``targets/devices/jetson-nano.yaml``) or path to a ``.yaml`` device file, both
            meaning ``ssh``.
        **overrides: constructor settings of the target kind, for example
            ``num_runs=10`` or, for a device file, any of its keys (``host="10.0.0.7"``).

    Raises:
        ValueError: ``spec`` names no registered kind and no device file.
        TargetUnavailable: the device file is invalid (`targets.device.DeviceFileError`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"target spec must be a non-empty string such as 'local', got {spec!r}")
    spec = spec.strip()

    kind, separator, argument = spec.partition(":")
    if separator and kind in _KINDS:
        return _resolve(kind)(argument, **overrides)
    if spec in _KINDS:
        return _resolve(spec)("", **overrides)
    if spec.endswith((".yaml", ".yml")) or Path(spec).name == spec:
        # A device name or device-file path, resolved and validated by the ssh kind.
        return _resolve("ssh")(spec, **overrides)
    raise ValueError(
        f"unknown target spec {spec!r}: expected one of {list_target_kinds()} as 'KIND' or "
        "'KIND:ARGUMENT', a device name from targets/devices/, or a path to a .yaml device file"
    )


def _local_factory(argument: str, **overrides: Any) -> Target:
    from targets.local import LocalTarget

    if argument:
        raise ValueError(f"the local target takes no argument, got 'local:{argument}'; use 'local'")
    return LocalTarget(**overrides)


def _ssh_factory(argument: str, **overrides: Any) -> Target:
    from targets.ssh import SSHTarget

    if not argument:
        raise ValueError("the ssh target needs a device file: use 'ssh:path/to/device.yaml' or a device name")
    return SSHTarget.from_device(argument, **overrides)


register_target_kind("local", _local_factory)
register_target_kind("ssh", _ssh_factory)
register_target_kind("predict", "targets.predict:predict_factory")
register_target_kind("local-cpu", "targets.predict.cpuclock:cpu_clock_factory")
