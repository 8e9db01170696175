"""Candidate search: face data, ArcFace training, evaluation, Optuna study."""

import os

# larq 0.14 needs Keras 2; TensorFlow 2.16 reads this variable on its first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
