"""Fixtures for the target tests: tiny LCE models, a loopback sshd and device files for it.

``tests/conftest.py`` imports the fixtures from here so that session-scoped ones are built
once for all target test modules.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshd import SSHServer, generate_key, sshd_missing_reason

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "targets" / "runner.py"


def build_tiny_model(groups: int = 1) -> bytes:
    """Convert a three-layer larq model with one binary convolution (grouped when ``groups`` > 1)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import larq as lq
    import larq_compute_engine as lce
    import tensorflow as tf

    tf.keras.utils.set_random_seed(groups)
    inputs = tf.keras.Input((8, 8, 32 * groups))
    x = lq.layers.QuantConv2D(
        32 * groups,
        3,
        padding="same",
        pad_values=1.0,
        groups=groups,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        use_bias=False,
    )(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(8)(x)
    return lce.convert_keras_model(tf.keras.Model(inputs, outputs))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Flatbuffers (``binary``, ``grouped``) and their files (``binary_path``, ``grouped_path``)."""
    folder = tmp_path_factory.mktemp("models")
    models: dict[str, Any] = {"binary": build_tiny_model(1), "grouped": build_tiny_model(2)}
    for name in ("binary", "grouped"):
        path = folder / f"{name}.tflite"
        path.write_bytes(models[name])
        models[f"{name}_path"] = path
    return models


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ed25519 client key that the test servers accept."""
    return generate_key(tmp_path_factory.mktemp("client") / "id_ed25519")


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory, user_key: Path) -> Iterator[SSHServer]:
    """An OpenSSH server on 127.0.0.1 for the whole session; skips when sshd is missing."""
    reason = sshd_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = SSHServer(tmp_path_factory.mktemp("sshd"), user_key)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_benchmark_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for ``lce_benchmark_model``: a script that runs the Python runner."""
    path = tmp_path_factory.mktemp("bin") / "lce_benchmark_model"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{RUNNER}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


DeviceFactory = Callable[..., Path]


@pytest.fixture
def device_file(
    tmp_path: Path, sshd_server: SSHServer, user_key: Path, fake_benchmark_binary: Path
) -> DeviceFactory:
    """Return ``make(server=None, **sections)``, which writes a device file for a test server.

    The defaults point at the session server with a fresh known_hosts file, a work
    directory whose name contains a space, the Python runner mode, a lock directory in
    ``tmp_path`` and fast retries. Keyword arguments update one section each, for example
    ``benchmark={"mode": "binary"}``.
    """

    def make(server: SSHServer | None = None, name: str = "device.yaml", **sections: dict[str, Any]) -> Path:
        server = server or sshd_server
        known_hosts = tmp_path / "known_hosts"
        if not known_hosts.exists():
            known_hosts.write_text(server.known_hosts_line())
        document: dict[str, Any] = {
            "name": "loopback",
            "connection": {
                "host": "127.0.0.1",
                "port": server.port,
                "user": getpass.getuser(),
                "key_file": str(user_key),
                "use_agent": False,
                "known_hosts": str(known_hosts),
                "ssh_config": None,
                "connect_timeout_s": 5,
            },
            "benchmark": {
                "mode": "python",
                "python": sys.executable,
                "warmup_runs": 2,
                "num_runs": 5,
                "work_dir": str(tmp_path / "board work"),
                "command_timeout_s": 60,
                "io_timeout_s": 10,
            },
            "board": {"cooldown_s": 0},
            "retry": {"retries": 2, "backoff_s": 0.2, "max_backoff_s": 1.0},
            "lock": {"lock_dir": str(tmp_path / "locks"), "lock_timeout_s": 60},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(document.get(section), dict):
                document[section].update(values)
            else:
                document[section] = values
        if document["benchmark"].get("mode") == "binary":
            document["benchmark"].pop("python", None)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return make
