"""Device files: YAML descriptions of a board reached over SSH, parsed and validated completely.

The format is documented in ``targets/devices/README.md``. Every key is checked before
anything connects: an unknown, missing or mistyped key raises `DeviceFileError` naming the
key path and the YAML line.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from targets.base import TargetUnavailable

__all__ = [
    "DEVICES_DIR",
    "BenchmarkSettings",
    "BoardSettings",
    "ConnectionSettings",
    "DeviceConfig",
    "DeviceFileError",
    "LockSettings",
    "RetrySettings",
    "list_devices",
    "load_device",
    "parse_cpu_list",
    "resolve_device_file",
]

DEVICES_DIR = Path(__file__).resolve().parent / "devices"

HOST_KEY_POLICIES = ("reject", "accept-new")
BENCHMARK_MODES = ("binary", "python")
TEMPLATE_FIELDS = ("graph", "threads", "warmup", "runs")
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class DeviceFileError(TargetUnavailable, ValueError):
    """A device file or a device-file override is invalid; nothing was connected.

    ``path`` is the key path (``benchmark.num_runs``), ``line`` the 1-based YAML line when
    known, and ``source`` the file.
    """

    def __init__(self, message: str, path: str = "", line: int | None = None, source: str = "") -> None:
        self.message = message
        self.path = path
        self.line = line
        self.source = source
        where = source
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = ", ".join(part for part in (where, path) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """How to reach the board (section ``connection``)."""

    host: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    use_agent: bool = True
    known_hosts: str | None = None
    host_key_policy: str = "reject"
    ssh_config: str | None = "~/.ssh/config"
    connect_timeout_s: float = 15.0


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """Benchmark program, run counts and remote paths (section ``benchmark``)."""

    mode: str = "binary"
    command: str = "lce_benchmark_model"
    python: str = "python3"
    num_threads: int = 1
    warmup_runs: int = 5
    num_runs: int = 50
    taskset: str | None = None
    use_xnnpack: bool | None = None
    use_indirect_bgemm: bool | None = None
    use_reference_bconv: bool | None = None
    extra_args: tuple[str, ...] = ()
    work_dir: str = "/tmp/binaryface"
    command_timeout_s: float = 600.0
    io_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class BoardSettings:
    """Board state checks around each measurement (section ``board``)."""

    read_state: bool = True
    temperature_limit_c: float | None = 80.0
    clock_drop_tolerance: float = 0.05
    max_remeasures: int = 2
    cooldown_s: float = 30.0
    sysfs_root: str = "/"


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """Retries of transient failures (section ``retry``)."""

    retries: int = 3
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class LockSettings:
    """Locks that keep two workers from measuring on one board at once (section ``lock``)."""

    lock_dir: str | None = None
    lock_timeout_s: float = 1800.0
    remote_lock: bool = True
    remote_lock_stale_s: float = 3600.0


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """A validated device file."""

    name: str
    connection: ConnectionSettings
    benchmark: BenchmarkSettings = BenchmarkSettings()
    board: BoardSettings = BoardSettings()
    retry: RetrySettings = RetrySettings()
    lock: LockSettings = LockSettings()
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data, with sections as in the YAML file."""
        record = dataclasses.asdict(self)
        record["benchmark"]["extra_args"] = list(self.benchmark.extra_args)
        return record


_SECTIONS: dict[str, type] = {
    "connection": ConnectionSettings,
    "benchmark": BenchmarkSettings,
    "board": BoardSettings,
    "retry": RetrySettings,
    "lock": LockSettings,
}
_TOP_LEVEL_SCALARS = ("name", "description")
# Keys whose values are local file paths, resolved against the device file's folder.
_LOCAL_PATHS = {"key_file", "known_hosts", "ssh_config", "lock_dir"}


class _Checker:
    """Validates values, raising `DeviceFileError` with the key path and YAML line."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: str, message: str) -> DeviceFileError:
        return DeviceFileError(message, path=path, line=self.lines.get(path), source=self.source)

    def check(self, path: str, key: str, value: Any) -> Any:
        rule = _RULES[key]
        try:
            return rule(value)
        except (TypeError, ValueError) as error:
            raise self.fail(path, str(error)) from error


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"expected a non-empty string, got {_type_name(value)} {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_type_name(value)} {value!r}")
    return value


def _optional(rule: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return None if value is None else rule(value)

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {_type_name(value)} {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ValueError(f"must be at least {minimum}{upper}, got {value}")
        return value

    return check


def _number(minimum: float, *, strict: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {_type_name(value)} {value!r}")
        if value < minimum or (strict and value == minimum):
            relation = "greater than" if strict else "at least"
            raise ValueError(f"must be {relation} {minimum}, got {value}")
        return float(value)

    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _cpu_list(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _CPU_LIST.match(value):
        raise ValueError(f"expected a CPU list such as 0 or 0-1,3 (as taskset -c takes), got {value!r}")
    parse_cpu_list(value)
    return value


def _command(value: Any) -> str:
    command = _string(value)
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(command) if field is not None]
    except ValueError as error:
        raise ValueError(f"invalid template {command!r}: {error}; write literal braces as {{{{ }}}}") from error
    unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"unknown placeholders {unknown} in {command!r}; allowed: {list(TEMPLATE_FIELDS)}")
    if fields and "graph" not in fields:
        raise ValueError(f"a command template must contain {{graph}}, got {command!r}")
    return command


def _argument_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"expected a list of strings such as ['--use_caching=true'], got {value!r}")
    return tuple(value)


_RULES: dict[str, Callable[[Any], Any]] = {
    "name": _string,
    "description": _text,
    "host": _string,
    "port": _optional(_integer(1, 65535)),
    "user": _optional(_string),
    "key_file": _optional(_string),
    "use_agent": _boolean,
    "known_hosts": _optional(_string),
    "host_key_policy": _choice(*HOST_KEY_POLICIES),
    "ssh_config": _optional(_string),
    "connect_timeout_s": _number(0, strict=True),
    "mode": _choice(*BENCHMARK_MODES),
    "command": _command,
    "python": _string,
    "num_threads": _integer(1),
    "warmup_runs": _integer(0),
    "num_runs": _integer(1),
    "taskset": _optional(_cpu_list),
    "use_xnnpack": _optional(_boolean),
    "use_indirect_bgemm": _optional(_boolean),
    "use_reference_bconv": _optional(_boolean),
    "extra_args": _argument_list,
    "work_dir": _string,
    "command_timeout_s": _number(0, strict=True),
    "io_timeout_s": _number(0, strict=True),
    "read_state": _boolean,
    "temperature_limit_c": _optional(_number(0, strict=True)),
    "clock_drop_tolerance": _number(0),
    "max_remeasures": _integer(0),
    "cooldown_s": _number(0),
    "sysfs_root": _string,
    "retries": _integer(0),
    "backoff_s": _number(0),
    "backoff_factor": _number(1),
    "max_backoff_s": _number(0),
    "lock_dir": _optional(_string),
    "lock_timeout_s": _number(0, strict=True),
    "remote_lock": _boolean,
    "remote_lock_stale_s": _number(0, strict=True),
}

# Override keyword -> section; the field names are unique across sections.
_FIELD_SECTIONS: dict[str, str] = {
    field.name: section for section, cls in _SECTIONS.items() for field in dataclasses.fields(cls)
}


def parse_cpu_list(cpus: str) -> list[int]:
    """Expand a taskset CPU list such as ``"0-2,5"`` into ``[0, 1, 2, 5]``."""
    result: list[int] = []
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"CPU range {part!r} runs backwards; write it as {high}-{low}")
        result.extend(range(low, high + 1))
    return result


def list_devices() -> list[str]:
    """Return the names of the device files shipped in ``targets/devices/``."""
    return sorted(path.stem for path in DEVICES_DIR.glob("*.yaml"))


def resolve_device_file(spec: str | Path) -> Path:
    """Return the device file that ``spec`` names: a path to a ``.yaml`` file or a device name.

    Raises:
        DeviceFileError: the file does not exist.
    """
    text = str(spec)
    if isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise DeviceFileError(f"device file not found: {path}; check the path")
        return path.resolve()
    path = DEVICES_DIR / f"{text}.yaml"
    if not path.is_file():
        raise DeviceFileError(
            f"no device named {text!r}; known devices: {list_devices()} (in {DEVICES_DIR}), "
            "or pass a path to a .yaml device file"
        )
    return path


def _index_lines(node: yaml.Node, prefix: str, lines: dict[str, int], source: str) -> None:
    """Record the 1-based line of every mapping key and reject duplicate keys."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        if path in lines:
            raise DeviceFileError(
                f"duplicate key (first on line {lines[path]}); keep one", path, key_node.start_mark.line + 1, source
            )
        lines[path] = key_node.start_mark.line + 1
        _index_lines(value_node, path, lines, source)


def _resolve_local_path(value: str | None, base: Path | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return str(path)


def _build_section(
    checker: _Checker, section: str, raw: Any, base: Path | None
) -> dict[str, Any]:
    cls = _SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise checker.fail(section, f"expected a mapping of settings, got {_type_name(raw)} {raw!r}")
    known = [field.name for field in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{section}.{key}"
        if key not in known:
            raise checker.fail(path, f"unknown key {key!r} in section {section!r}; valid keys: {known}")
        values[key] = checker.check(path, key, value)
        if key in _LOCAL_PATHS:
            values[key] = _resolve_local_path(values[key], base)
    return values


def parse_device(
    data: Any, *, source: str = "", lines: Mapping[str, int] | None = None, base: Path | None = None
) -> DeviceConfig:
    """Validate an already-loaded device document and build its `DeviceConfig`.

    ``base`` is the folder that relative local paths (``key_file``, ``known_hosts``,
    ``ssh_config``, ``lock_dir``) are resolved against.
    """
    checker = _Checker(source, lines or {})
    if not isinstance(data, dict):
        raise checker.fail("", f"a device file must be a mapping with a 'connection' section, got {_type_name(data)}")
    valid = [*_TOP_LEVEL_SCALARS, *_SECTIONS]
    for key in data:
        if key not in valid:
            raise checker.fail(str(key), f"unknown top-level key {key!r}; valid keys: {valid}")
    if "connection" not in data:
        raise checker.fail("connection", "missing section; it needs at least 'host'")

    sections = {section: _build_section(checker, section, data.get(section), base) for section in _SECTIONS}
    if "host" not in sections["connection"]:
        raise checker.fail("connection.host", "missing key; set the board's host name, address or ssh config alias")
    benchmark = sections["benchmark"]
    if benchmark.get("mode") == "python" and "command" in benchmark:
        raise checker.fail("benchmark.command", "is used only with mode: binary; remove it or set mode: binary")
    if benchmark.get("mode", "binary") == "binary" and "python" in benchmark:
        raise checker.fail("benchmark.python", "is used only with mode: python; remove it or set mode: python")

    default_name = Path(source).stem if source else sections["connection"]["host"]
    name = checker.check("name", "name", data["name"]) if "name" in data else default_name
    description = checker.check("description", "description", data.get("description", "")) or ""
    return DeviceConfig(
        name=name,
        description=description,
        source=source,
        connection=ConnectionSettings(**sections["connection"]),
        benchmark=BenchmarkSettings(**sections["benchmark"]),
        board=BoardSettings(**sections["board"]),
        retry=RetrySettings(**sections["retry"]),
        lock=LockSettings(**sections["lock"]),
    )


def apply_overrides(config: DeviceConfig, overrides: Mapping[str, Any]) -> DeviceConfig:
    """Return ``config`` with flat overrides (``num_runs=10``, ``host=...``) validated and applied."""
    checker = _Checker(config.source, {})
    updates: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if key in ("name", "description"):
            config = dataclasses.replace(config, **{key: checker.check(f"override {key}", key, value)})
            continue
        if key not in _FIELD_SECTIONS:
            raise checker.fail(
                f"override {key}", f"unknown setting; valid settings: {sorted([*_FIELD_SECTIONS, 'name'])}"
            )
        section = _FIELD_SECTIONS[key]
        checked = checker.check(f"override {key}", key, list(value) if isinstance(value, tuple) else value)
        if key in _LOCAL_PATHS:
            checked = _resolve_local_path(checked, None)
        updates.setdefault(section, {})[key] = checked
    for section, values in updates.items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})
    if config.benchmark.mode == "python" and "command" in updates.get("benchmark", {}):
        raise checker.fail("override command", "is used only with mode: binary; drop it or also pass mode='binary'")
    return config


def load_device(spec: str | Path, **overrides: Any) -> DeviceConfig:
    """Read, validate and return the device file that ``spec`` names, with ``overrides`` applied.

    Raises:
        DeviceFileError: the file is missing, is not valid YAML, or any key is invalid.
    """
    path = resolve_device_file(spec)
    source = str(path)
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DeviceFileError(f"invalid YAML: {error}", line=line, source=source) from error

    lines: dict[str, int] = {}
    if root is not None:
        _index_lines(root, "", lines, source)
    config = parse_device(data, source=source, lines=lines, base=path.parent)
    return apply_overrides(config, overrides) if overrides else config
