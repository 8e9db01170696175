"""Latency targets: the Target contract, local interpreter, SSH device agent."""

import os

# larq 0.14 needs Keras 2; TensorFlow 2.16 reads this variable on its first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The public names below import neither TensorFlow nor paramiko; `get_target` imports the
# module of the kind it builds.
from targets.base import (  # noqa: E402
    BenchmarkTimeout,
    Latency,
    ModelRejected,
    Target,
    TargetError,
    TargetUnavailable,
    TransientTargetError,
)
from targets.registry import get_target, list_target_kinds, register_target_kind  # noqa: E402

__all__ = [
    "BenchmarkTimeout",
    "Latency",
    "ModelRejected",
    "Target",
    "TargetError",
    "TargetUnavailable",
    "TransientTargetError",
    "get_target",
    "list_target_kinds",
    "register_target_kind",
]
