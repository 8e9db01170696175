"""Config files, machine descriptions and result records shared by the thesis-table experiments."""

from __future__ import annotations

import copy
import datetime
import fcntl
import json
import os
import platform
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from blocks.errors import BinaryFaceError

__all__ = [
    "ExperimentError",
    "PROJECT_ROOT",
    "RESULTS_PAGE",
    "append_results",
    "command_line",
    "describe_machine",
    "display_path",
    "iso_date",
    "load_config",
    "machine_info",
    "resolve_path",
    "timestamp",
    "write_outputs",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PAGE = PROJECT_ROOT / "experiments" / "RESULTS.md"


class ExperimentError(BinaryFaceError, ValueError):
    """An experiment config is invalid or names files that do not exist."""


def load_config(path: str | Path, schema: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Load an experiment config, merged over its ``base`` config, and check it against ``schema``.

    ``schema`` maps each section to its keys and their defaults. A config may name a
    ``base`` config (relative to itself) whose sections it overrides key by key, so that a
    variant states only what it changes. Unknown sections and keys raise
    ``ExperimentError`` naming them; missing keys take the schema's defaults.
    """
    data = _read_with_base(Path(path), seen=())
    config: dict[str, Any] = {}
    for section, value in data.items():
        if section not in schema:
            raise ExperimentError(f"{path}: unknown section {section!r}; allowed: {', '.join(schema)}")
        if isinstance(schema[section], Mapping) and schema[section] and not isinstance(value, Mapping):
            raise ExperimentError(f"{path}: section {section!r} must be a mapping, got {type(value).__name__}")
    for section, defaults in schema.items():
        given = data.get(section, {})
        if not isinstance(defaults, Mapping) or not defaults:
            config[section] = copy.deepcopy(given if section in data else defaults)
            continue
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ExperimentError(f"{path}: unknown key {section}.{unknown[0]}; allowed: {', '.join(defaults)}")
        config[section] = {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(given))}
    return config


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ExperimentError(f"{path}: base configs form a cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ExperimentError(f"cannot read experiment config {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ExperimentError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: an experiment config must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_with_base(path.parent / base, (*seen, path.resolve()))
    for section, value in data.items():
        if isinstance(value, Mapping) and isinstance(merged.get(section), Mapping):
            merged[section] = {**merged[section], **value}
        else:
            merged[section] = value
    return merged


def resolve_path(value: str | Path | None) -> Path | None:
    """Return ``value`` as a path, relative paths taken from the project root."""
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def display_path(path: str | Path) -> str:
    """Return ``path`` relative to the project root when it lies inside it, else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def machine_info() -> dict[str, Any]:
    """Return the CPU model, core count, load average and library versions of this host."""
    from importlib import metadata

    from targets.local import cpu_model

    versions = {}
    for package in ("tensorflow", "larq", "larq-compute-engine"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": versions,
    }


def describe_machine(machine: Mapping[str, Any]) -> str:
    """Return one Markdown sentence about the machine, for result sections."""
    versions = machine["versions"]
    return (
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores shared with other jobs (load average "
        f"{machine['loadavg'][0]:.1f} at the end), TensorFlow {versions['tensorflow']}, larq {versions['larq']}, "
        f"LCE {versions['larq-compute-engine']}, Python {machine['python']}."
    )


def command_line(module: str, argv: Sequence[str]) -> str:
    """Return the shell command that reruns ``module`` with ``argv``."""
    return shlex.join([".venv/bin/python", "-m", module, *argv])


def write_outputs(folder: Path, stem: str, document: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``document`` as JSON and ``markdown`` next to it; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{stem}.json"
    markdown_path = folder / f"{stem}.md"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown + "\n", encoding="utf-8")
    return json_path, markdown_path


def append_results(markdown: str, page: Path = RESULTS_PAGE) -> None:
    """Append a section to the results page, holding a file lock against concurrent writers."""
    page.parent.mkdir(parents=True, exist_ok=True)
    with open(page, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            existing = handle.read()
            if not existing:
                handle.write("# Recorded results\n\nEach section was appended by the experiment it names.\n")
            elif not existing.endswith("\n"):
                handle.write("\n")
            handle.write("\n" + markdown.rstrip("\n") + "\n")
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def iso_date(stamp: str) -> str:
    """Return the ``YYYY-MM-DD`` date of a :func:`timestamp` string."""
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"


def timestamp() -> str:
    """Return the current UTC time as ``YYYYmmdd-HHMMSS`` for result folders."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def experiment_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    quick_help: str,
    default_config: Path,
    run: Callable[..., dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """Parse the experiments' shared options, call ``run`` and print ``report`` of its document.

    Returns 2 with one ``error:`` line when ``run`` raises a ``BinaryFaceError``.
    """
    import argparse
    import logging
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, default=default_config, help="experiment config (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-record", action="store_true", help="do not append a section to experiments/RESULTS.md")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        document = run(args.config, quick=args.quick, record=not args.no_record, argv=arguments)
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(report(document))
    return 0
