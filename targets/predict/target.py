"""Targets that predict latency from a stored table instead of (or before) measuring.

``get_target("predict:local")`` returns a `PredictedTarget`: every "measurement" is the
table's prediction. ``get_target("predict:local", budget_ms=20)`` returns a
`ScreeningTarget`, which predicts first and measures on the real target only when the
prediction is at most ``budget_ms * (1 + margin)``. A candidate predicted clearly over the
budget costs no measurement: it gets its prediction back, marked ``median_from="predicted"``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from targets.base import Latency, ModelRejected, Target
from targets.predict.table import LatencyTable, Prediction, resolve_table

__all__ = ["PredictedTarget", "ScreeningTarget", "predict_factory"]

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.15
PREDICTED = "predicted"


def _check_flatbuffer(flatbuffer: Any) -> bytes:
    if not isinstance(flatbuffer, (bytes, bytearray, memoryview)):
        raise TypeError(f"flatbuffer must be bytes, got {type(flatbuffer).__name__}")
    return bytes(flatbuffer)


class PredictedTarget(Target):
    """A latency table used as a target: `measure` returns the predicted latency.

    The `Latency` of a prediction has ``median_from="predicted"``, ``runs=1`` (one
    prediction), ``warmup=0``, equal median, mean, minimum and maximum, and ``std_ms=0``.
    Its ``options`` contain the cost by op type and the features the table cannot price. A
    model with unpriced features is predicted too fast, and a warning names the features.

    Args:
        table: the fitted table.
        source: the table's file, for `describe` and the records.
    """

    kind = "predict"

    def __init__(self, table: LatencyTable, *, source: str = "") -> None:
        self.table = table
        self.source = source
        self._warned: set[frozenset[str]] = set()

    def predict(self, flatbuffer: bytes, *, name: str = "model") -> Prediction:
        """Predict ``flatbuffer``'s latency; warns once per set of unpriced features."""
        prediction = self.table.predict(_check_flatbuffer(flatbuffer))
        unpriced = frozenset(prediction.unpriced)
        if unpriced and unpriced not in self._warned:
            self._warned.add(unpriced)
            logger.warning(
                "%s: the %s table has no price for %s; the prediction leaves them out and is too low. "
                "Refit the table with models that contain these ops",
                name,
                self.table.name,
                ", ".join(sorted(unpriced)),
            )
        return prediction

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Return the predicted latency of ``flatbuffer`` (raises `ModelRejected` for an unreadable model)."""
        started_at = time.time()
        prediction = self.predict(flatbuffer, name=name)
        return self._latency(prediction, started_at)

    def _latency(self, prediction: Prediction, started_at: float) -> Latency:
        value = prediction.latency_ms
        return Latency(
            median_ms=value,
            mean_ms=value,
            std_ms=0.0,
            min_ms=value,
            max_ms=value,
            runs=1,
            warmup=0,
            median_from=PREDICTED,
            options={
                "table": self.source,
                "by_op_type_ms": {key: round(cost, 6) for key, cost in prediction.by_op_type_ms.items()},
                "unpriced": prediction.unpriced,
            },
            target=self._target_info(),
            started_at=started_at,
            finished_at=time.time(),
        )

    def _target_info(self) -> dict[str, Any]:
        fitted_on = self.table.provenance.get("target", {})
        return {
            "kind": self.kind,
            "name": self.table.name,
            "table": self.source,
            "cpu": fitted_on.get("cpu", "unknown"),
            "fitted_on": fitted_on,
        }

    def describe(self) -> dict[str, Any]:
        """Return the kind, the table's name and file, the CPU it was fitted on and its fit error."""
        info = self._target_info()
        info["options"] = {"features": len(self.table.weights_ms), "fit": self.table.fit.get("leave_one_out") or self.table.fit.get("training")}
        return info


class ScreeningTarget(PredictedTarget):
    """Predict first; measure on the real target only candidates that may fit the budget.

    A model predicted at most ``budget_ms * (1 + margin)`` is measured on ``inner`` and its
    measured `Latency` is returned with ``options["predicted_ms"]`` added. Any other model
    returns its prediction (``median_from="predicted"``), which a search prunes as over
    budget without measuring it. A model with features the table cannot price is always
    measured, because its prediction is too low.

    Args:
        table: the fitted table.
        budget_ms: the latency budget in milliseconds per image.
        margin: the share above the budget that is still measured; it absorbs prediction
            error. 0.15 measures everything predicted up to 15 % over the budget.
        inner: the target that measures, or a target spec for `get_target`; by default the
            spec and overrides the table records in ``measure_with``.
        source: the table's file.
    """

    def __init__(
        self,
        table: LatencyTable,
        *,
        budget_ms: float,
        margin: float = DEFAULT_MARGIN,
        inner: Target | str | None = None,
        source: str = "",
    ) -> None:
        super().__init__(table, source=source)
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not budget_ms > 0:
            raise ValueError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
            raise ValueError(f"margin must be a number >= 0 such as 0.15, got {margin!r}")
        if inner is None and not table.measure_with.get("spec"):
            raise ValueError(
                f"the {table.name} table records no target to measure with (measure_with.spec); "
                "pass inner='local' or a device file"
            )
        self.budget_ms = float(budget_ms)
        self.margin = float(margin)
        self._inner_spec = inner
        self._inner: Target | None = inner if isinstance(inner, Target) else None
        self.measured = 0
        self.screened = 0

    @property
    def threshold_ms(self) -> float:
        """Predictions above this are not measured."""
        return self.budget_ms * (1.0 + self.margin)

    def inner(self) -> Target:
        """Return the measuring target, building it on first use."""
        if self._inner is None:
            from targets.registry import get_target

            if isinstance(self._inner_spec, str):
                self._inner = get_target(self._inner_spec)
            else:
                recorded = self.table.measure_with
                self._inner = get_target(str(recorded["spec"]), **dict(recorded.get("overrides", {})))
        return self._inner

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Measure ``flatbuffer`` on the inner target, or return its prediction when it is clearly over budget."""
        started_at = time.time()
        flatbuffer = _check_flatbuffer(flatbuffer)
        try:
            prediction = self.predict(flatbuffer, name=name)
        except ModelRejected as error:
            # The inner target decides what it can run; an unreadable graph only loses the screen.
            logger.warning("%s: cannot predict (%s); measuring", name, error)
            prediction = None

        if prediction is not None and not prediction.unpriced and prediction.latency_ms > self.threshold_ms:
            self.screened += 1
            logger.info(
                "%s: predicted %.2f ms is over %.2f ms (budget %g ms + %g %%); not measured",
                name, prediction.latency_ms, self.threshold_ms, self.budget_ms, 100 * self.margin,
            )
            latency = self._latency(prediction, started_at)
            latency.options["screened_out"] = True
            latency.options["threshold_ms"] = self.threshold_ms
            return latency

        latency = self.inner().measure(flatbuffer, name=name)
        self.measured += 1
        if prediction is not None:
            latency.options["predicted_ms"] = prediction.latency_ms
            latency.options["prediction_table"] = self.source
            logger.debug("%s: predicted %.2f ms, measured %.2f ms", name, prediction.latency_ms, latency.median_ms)
        return latency

    def describe(self) -> dict[str, Any]:
        """Return the kind, table, budget, margin, inner target spec and the screening counts."""
        info = super().describe()
        inner = self._inner_spec if isinstance(self._inner_spec, str) else None
        if isinstance(self._inner_spec, Target):
            inner = self._inner_spec.kind
        info["options"].update(
            budget_ms=self.budget_ms,
            margin=self.margin,
            inner=inner or dict(self.table.measure_with),
            measured=self.measured,
            screened=self.screened,
        )
        return info

    def close(self) -> None:
        """Close the inner target and log how many measurements the screen saved."""
        if self.measured or self.screened:
            logger.info(
                "screening with the %s table: %d measured, %d not measured (predicted over %.2f ms)",
                self.table.name, self.measured, self.screened, self.threshold_ms,
            )
        if self._inner is not None:
            self._inner.close()
            if not isinstance(self._inner_spec, Target):
                self._inner = None


_OVERRIDES = ("budget_ms", "margin", "inner")
# Settings that may also follow the table in the spec string, for command lines that pass
# only a spec: "predict:local,margin=0.3,inner=jetson-nano".
_SPEC_SETTINGS = {"margin": float, "inner": str}


def predict_factory(argument: str, **overrides: Any) -> Target:
    """Build the target for ``predict:NAME``: a `PredictedTarget`, or a `ScreeningTarget` when ``budget_ms`` is given.

    ``NAME`` is a table in ``targets/profiles/`` (``local``) or a path to a table file. It may
    be followed by ``,margin=FRACTION`` and ``,inner=TARGET``. Overrides: ``budget_ms``,
    ``margin`` and ``inner`` (see `ScreeningTarget`); a setting given both ways is an error.
    """
    if not argument:
        raise ValueError("the predict target needs a latency table: use 'predict:NAME' (targets/profiles/NAME.json) or 'predict:PATH.json'")
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for the predict target; valid: {list(_OVERRIDES)}")
    table_name, *items = argument.split(",")
    settings = dict(overrides)
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or key not in _SPEC_SETTINGS:
            raise ValueError(f"invalid setting {item!r} in 'predict:{argument}'; expected ,margin=FRACTION or ,inner=TARGET")
        if settings.get(key) is not None:
            raise ValueError(f"{key} is given both in 'predict:{argument}' and as a setting; give it once")
        try:
            settings[key] = _SPEC_SETTINGS[key](text.strip())
        except ValueError as error:
            raise ValueError(f"invalid {key} {text!r} in 'predict:{argument}': {error}") from error

    path = resolve_table(table_name)
    table = LatencyTable.load(path)
    budget_ms = settings.get("budget_ms")
    if budget_ms is None:
        for key in ("margin", "inner"):
            if settings.get(key) is not None:
                raise ValueError(f"{key} applies only with budget_ms; pass budget_ms to screen candidates")
        return PredictedTarget(table, source=str(path))
    return ScreeningTarget(
        table,
        budget_ms=budget_ms,
        margin=settings.get("margin", DEFAULT_MARGIN),
        inner=settings.get("inner"),
        source=str(path),
    )
