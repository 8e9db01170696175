"""Pareto dashboard of a search: a self-contained ``report.html`` and optuna-dashboard.

The report plots verification accuracy against measured latency for every finished trial
that has a latency. Trained trials are drawn at their accuracy. Trials that were never
trained (over the budget, or failed after measuring) are drawn at their latency in a strip
under the plot. The feasible Pareto front (no other trial within the budget is both more accurate and
faster) is highlighted, the budget is a vertical line, and hovering a point shows the
architecture and its statistics. A table lists the front with the command that exports each
of its trials. The plot is inline SVG drawn by inline JavaScript: the page references no
external resource and works offline from a file.

Example::

    python -m search.dashboard --out runs/att --budget-ms 160

writes ``runs/att/report.html`` and then serves optuna-dashboard on http://127.0.0.1:8080/
until interrupted; ``--no-serve`` only writes the report.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from blocks.errors import BinaryFaceError
from blocks.files import write_atomically
from search.study import PRUNED_OVER_BUDGET, TrialRecord, pareto_front, study_records

__all__ = [
    "DashboardError",
    "TrialPoint",
    "build_points",
    "export_command",
    "main",
    "load_study",
    "redact_url",
    "render_report",
    "read_spec_data",
    "read_spec_text",
    "resolve_artifact",
    "serve_dashboard",
    "spec_summary",
    "storage_url",
    "study_budget_ms",
    "write_report",
]

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("report_template.html")
BUDGET_ATTR = "budget_ms"
DATA_ATTR = "data"
DEFAULT_PORT = 8080
# Spec keys shown for each block, in this order; the others stay in the spec file.
SUMMARY_KEYS = ("filters", "units", "kernel_size", "strides", "groups", "bits", "repeats", "mixing", "mixing_groups")
_OVER_BUDGET_REASON = re.compile(rf"^{PRUNED_OVER_BUDGET}: [0-9.]+ ms > ([0-9.eE+-]+) ms")

# Kinds of plotted points.
TRAINED = "trained"
PRUNED_IN_TRAINING = "pruned in training"
OVER_BUDGET = "over budget"
NOT_TRAINED = "not trained"


class DashboardError(BinaryFaceError, ValueError):
    """A study cannot be found or opened, or the report cannot be written."""


@dataclass
class TrialPoint:
    """One finished trial as the report draws it.

    ``accuracy`` is the verification accuracy for ``trained`` points and the last reported
    accuracy for ``pruned in training`` ones. It is None for trials that were never trained.
    ``hover`` contains the tooltip's lines.
    """

    number: int
    state: str
    kind: str
    latency_ms: float | None
    accuracy: float | None
    front: bool = False
    reason: str | None = None
    architecture: list[str] = field(default_factory=list)
    hover: list[str] = field(default_factory=list)
    export: str | None = None

    @property
    def plotted(self) -> bool:
        return self.latency_ms is not None


def load_study(*, out: Path | None = None, storage: str | None = None, study_name: str | None = None) -> Any:
    """Load the study stored under a search's ``out`` folder or at a storage URL.

    Without ``study_name`` the storage must contain exactly one study.

    Raises:
        DashboardError: the folder has no ``study.db``, the storage cannot be opened, or the
            study is not found.
    """
    import optuna

    if (out is None) == (storage is None):
        raise DashboardError("pass either the search's --out folder or a --storage URL, not both")
    if out is not None:
        database = out / "study.db"
        # SQLAlchemy would create an empty database at a wrong path instead of failing.
        if not database.is_file():
            raise DashboardError(f"study database not found: {database}; pass the --out folder of a search run")
    storage = storage_url(out, storage)

    try:
        names = optuna.get_all_study_names(storage)
    except Exception as error:  # SQLAlchemy and the database drivers raise many unrelated types
        raise DashboardError(f"cannot open the study storage {redact_url(storage)}: {type(error).__name__}: {error}") from error
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise DashboardError(f"the storage has {len(names)} studies ({listed}); pass --study-name to choose one")
        study_name = names[0]
    elif study_name not in names:
        raise DashboardError(f"study {study_name!r} not found in {redact_url(storage)}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def storage_url(out: Path | None, storage: str | None) -> str:
    """Return the storage URL of a search's ``out`` folder, or ``storage`` itself."""
    if out is not None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if storage is None:
        raise DashboardError("pass either the search's --out folder or a --storage URL")
    return storage


def study_budget_ms(study: Any, records: Sequence[TrialRecord]) -> float | None:
    """Return the latency budget the study recorded, in milliseconds per image.

    The study's ``budget_ms`` user attribute comes first. Otherwise the budget is read from
    the reasons of trials pruned over the budget, which name it. None when neither exists.
    """
    recorded = study.user_attrs.get(BUDGET_ATTR)
    if isinstance(recorded, (int, float)) and recorded > 0:
        return float(recorded)
    budgets = set()
    for record in records:
        match = _OVER_BUDGET_REASON.match(record.reason or "")
        if match:
            budgets.add(float(match.group(1)))
    if len(budgets) == 1:
        return budgets.pop()
    if budgets:
        log.warning("over-budget trials name different budgets %s; pass --budget-ms", sorted(budgets))
    return None


def resolve_artifact(recorded: str | None, out: Path | None, subfolder: str) -> Path | None:
    """Find a file a trial recorded (spec or weights), also when the study was run elsewhere.

    The search records paths as its ``--out`` was spelled, often relative to where it ran.
    When that path does not exist, the same file name under ``out/subfolder`` is tried.
    """
    if not recorded:
        return None
    path = Path(recorded)
    if path.is_file():
        return path
    if out is not None and (out / subfolder / path.name).is_file():
        return out / subfolder / path.name
    return None


def spec_summary(spec_data: Any) -> list[str]:
    """Return one line per block of a spec: its name, type and main hyperparameters."""
    if not isinstance(spec_data, dict) or not isinstance(spec_data.get("blocks"), list):
        return []
    lines = []
    for block in spec_data["blocks"]:
        if not isinstance(block, dict):
            continue
        keys = " ".join(f"{key}={_plain_value(block[key])}" for key in SUMMARY_KEYS if key in block)
        lines.append(f"{block.get('name', '?')} ({block.get('block', '?')}) {keys}".rstrip())
    return lines


def export_command(
    number: int,
    *,
    out: Path | None,
    storage: str | None,
    study_name: str,
    destination: str,
    data: str | None,
) -> str:
    """Return the shell command that exports trial ``number`` with ``search.export``."""
    words = ["python", "-m", "search.export"]
    if out is not None:
        words += ["--out", str(out)]
    else:
        words += ["--storage", redact_url(storage or ""), "--study-name", study_name]
    words += ["--trial", str(number), "--to", destination]
    command = shlex.join(words)
    # Without a recorded data folder the user has to name the one the search used.
    return command + (f" --data {shlex.quote(data)}" if data else " --data DATA")


def build_points(
    study: Any,
    records: Sequence[TrialRecord],
    budget_ms: float | None,
    *,
    out: Path | None = None,
    storage: str | None = None,
) -> list[TrialPoint]:
    """Classify every finished trial for the plot and write its tooltip and export command."""
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    front = {record.number for record in pareto_front(records, budget_ms)}
    data = study.user_attrs.get(DATA_ATTR)

    points = []
    for record in records:
        trial = trials[record.number]
        kind, accuracy = _classify(record, trial, budget_ms)
        spec_data = read_spec_data(record.spec, trial.user_attrs.get("spec_yaml"), out)
        architecture = spec_summary(spec_data)
        if not architecture and record.params:
            architecture = [f"{key}={_plain_value(value)}" for key, value in record.params.items()]
        name = spec_data.get("name") if isinstance(spec_data, dict) else None
        point = TrialPoint(
            number=record.number,
            state=record.state,
            kind=kind,
            latency_ms=record.latency_ms if _finite(record.latency_ms) else None,
            accuracy=accuracy,
            front=record.number in front,
            reason=record.reason,
            architecture=architecture,
        )
        point.hover = _hover_lines(record, point, trial)
        if point.front:
            point.export = export_command(
                record.number,
                out=out,
                storage=storage,
                study_name=study.study_name,
                destination=f"exports/{name or f'trial{record.number:04d}'}",
                data=data if isinstance(data, str) else None,
            )
        points.append(point)
    return points


def render_report(
    study: Any,
    records: Sequence[TrialRecord],
    points: Sequence[TrialPoint],
    budget_ms: float | None,
    *,
    source: str,
) -> str:
    """Return the report page: the plot's data, the Pareto table and all trials."""
    by_number = {record.number: record for record in records}
    front = sorted((point for point in points if point.front), key=lambda point: point.latency_ms or 0.0)
    unplotted = [point for point in points if not point.plotted]
    counts = {kind: sum(1 for point in points if point.plotted and point.kind == kind)
              for kind in (TRAINED, PRUNED_IN_TRAINING, OVER_BUDGET, NOT_TRAINED)}

    plot_data = {
        "budget_ms": budget_ms,
        "points": [
            {
                "number": point.number,
                "kind": point.kind,
                "front": point.front,
                "latency_ms": point.latency_ms,
                "accuracy": point.accuracy,
                "hover": point.hover,
            }
            for point in points
            if point.plotted
        ],
    }
    budget_text = f"{budget_ms:g} ms" if budget_ms is not None else "not recorded (pass --budget-ms)"
    summary = (
        f"{len(points)} finished trials: {counts[TRAINED]} trained, {counts[PRUNED_IN_TRAINING]} pruned in training, "
        f"{counts[OVER_BUDGET]} over the budget, {counts[NOT_TRAINED]} not trained for another reason, "
        f"{len(unplotted)} without a latency (not plotted); {len(front)} on the feasible Pareto front."
    )
    replacements = {
        "TITLE": html.escape(f"Pareto report: study {study.study_name}"),
        "STUDY": html.escape(study.study_name),
        "SOURCE": html.escape(source),
        "BUDGET": html.escape(budget_text),
        "SUMMARY": html.escape(summary),
        "FRONT_TABLE": _front_table(front, by_number),
        "DATA_NOTE": "" if isinstance(study.user_attrs.get(DATA_ATTR), str) else (
            "<p class=\"note\">The study does not record its face folder: replace <code>DATA</code> with the "
            "folder the search used.</p>"
        ),
        "TRIALS_TABLE": _trials_table(points, by_number),
        "PLOT_DATA": _script_json(plot_data),
        "N_FINISHED": str(len(points)),
        "N_UNPLOTTED": str(len(unplotted)),
    }
    template = TEMPLATE.read_text(encoding="utf-8")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: replacements[match.group(1)], template)


def write_report(
    *,
    out: Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    budget_ms: float | None = None,
    report: Path | None = None,
) -> tuple[Path, Any, list[TrialPoint]]:
    """Open a study and write its report; return the report's path, the study and the points.

    ``report`` defaults to ``report.html`` under ``out``, or in the working folder for a
    storage URL. The page is written to a temporary file and renamed, so a browser never
    reads half of it.
    """
    study = load_study(out=out, storage=storage, study_name=study_name)
    records = study_records(study)
    if budget_ms is None:
        budget_ms = study_budget_ms(study, records)
    points = build_points(study, records, budget_ms, out=out, storage=storage)
    source = str(out) if out is not None else f"{redact_url(storage or '')}, study {study.study_name}"
    page = render_report(study, records, points, budget_ms, source=source)

    report = report or (out / "report.html" if out is not None else Path("report.html"))
    try:
        write_atomically(report, page.encode("utf-8"))
    except OSError as error:
        raise DashboardError(f"cannot write the report {report}: {error.strerror}") from error
    log.debug("report of %d finished trials written to %s", len(points), report)
    return report, study, points


def serve_dashboard(storage: str, port: int) -> Any:
    """Bind optuna-dashboard for ``storage`` to 127.0.0.1:``port`` and return the WSGI server.

    The caller runs ``serve_forever()`` and then ``server_close()``. Port 0 binds a free port,
    which ``server.server_port`` then contains.
    """
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            log.debug("optuna-dashboard: " + format, *args)

    app = optuna_dashboard.wsgi(storage)
    try:
        return make_server("127.0.0.1", port, app, handler_class=QuietHandler)
    except OSError as error:
        raise DashboardError(f"cannot listen on 127.0.0.1:{port}: {error.strerror}; choose another --port") from error


def _classify(record: TrialRecord, trial: Any, budget_ms: float | None) -> tuple[str, float | None]:
    """Return the point's kind and the accuracy it is drawn at."""
    if record.state == "COMPLETE" and _finite(record.accuracy):
        return TRAINED, record.accuracy
    reported = [value for _, value in sorted(trial.intermediate_values.items()) if _finite(value)]
    if not reported and isinstance(record.accuracy_by_epoch, dict):
        by_epoch = sorted((float(epoch), value) for epoch, value in record.accuracy_by_epoch.items())
        reported = [value for _, value in by_epoch if _finite(value)]
    if record.state == "PRUNED" and reported:
        return PRUNED_IN_TRAINING, reported[-1]
    over = (record.reason or "").startswith(PRUNED_OVER_BUDGET) or (
        budget_ms is not None and _finite(record.latency_ms) and record.latency_ms > budget_ms
    )
    return (OVER_BUDGET if over else NOT_TRAINED), None


def _hover_lines(record: TrialRecord, point: TrialPoint, trial: Any) -> list[str]:
    lines = [f"trial {record.number} ({point.kind}{', Pareto front' if point.front else ''})"]
    if point.kind == TRAINED:
        accuracy = f"accuracy {record.accuracy:.4f}"
        if _finite(record.accuracy_std):
            accuracy += f" \u00b1 {record.accuracy_std:.4f}"
        if _finite(record.auc):
            accuracy += f", AUC {record.auc:.4f}"
        lines.append(accuracy)
    elif point.kind == PRUNED_IN_TRAINING:
        lines.append(f"last reported accuracy {point.accuracy:.4f}")
    if point.latency_ms is not None:
        lines.append(f"latency {point.latency_ms:.2f} ms{_latency_detail(record.latency)}")
    if record.binary_macs is not None or record.float_macs is not None:
        lines.append(f"MACs: {_mega(record.binary_macs)} binary, {_mega(record.float_macs)} float")
    if _finite(record.binary_mac_share):
        lines.append(f"binary-kernel share (LceBconv2d MACs): {100 * record.binary_mac_share:.1f} %")
    if record.params_count is not None:
        size = f", {record.size_bytes / 1e6:.2f} MB" if _finite(record.size_bytes) else ""
        lines.append(f"params {record.params_count:,}{size}")
    fallbacks = trial.user_attrs.get("float_fallbacks")
    if isinstance(fallbacks, list) and fallbacks:
        lines.append(f"declared 1-bit but float in LCE: {len(fallbacks)} layer(s)")
    if record.reason:
        lines.append(f"reason: {record.reason}")
    lines += point.architecture
    return lines


def _latency_detail(latency: Any) -> str:
    if not isinstance(latency, dict):
        return ""
    parts = []
    if isinstance(latency.get("runs"), int):
        parts.append(f"median of {latency['runs']} runs")
    target = latency.get("target")
    if isinstance(target, dict):
        where = target.get("name") or target.get("kind")
        if where:
            parts.append(f"on {where}")
    return f" ({', '.join(parts)})" if parts else ""


def _front_table(front: Sequence[TrialPoint], by_number: dict[int, TrialRecord]) -> str:
    if not front:
        return "<p>No completed trial is within the budget.</p>"
    header = (
        "<tr><th>trial</th><th>accuracy</th><th>latency ms</th><th>binary-kernel share</th>"
        "<th>binary MACs</th><th>float MACs</th><th>params</th><th>architecture</th></tr>"
    )
    rows = []
    for point in front:
        record = by_number[point.number]
        share = f"{100 * record.binary_mac_share:.1f} %" if _finite(record.binary_mac_share) else "?"
        cells = [
            str(point.number),
            f"{record.accuracy:.4f}",
            f"{record.latency_ms:.2f}",
            share,
            _mega(record.binary_macs),
            _mega(record.float_macs),
            f"{record.params_count:,}" if record.params_count is not None else "?",
        ]
        architecture = "<br>".join(html.escape(line) for line in point.architecture)
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
            + f"<td class=\"arch\">{architecture}</td></tr>"
        )
        rows.append(
            f"<tr class=\"export\"><td colspan=\"{len(cells) + 1}\">export: "
            f"<code>{html.escape(point.export or '')}</code></td></tr>"
        )
    return f"<table class=\"front\">{header}{''.join(rows)}</table>"


def _trials_table(points: Sequence[TrialPoint], by_number: dict[int, TrialRecord]) -> str:
    header = "<tr><th>trial</th><th>state</th><th>plotted as</th><th>accuracy</th><th>latency ms</th><th>params</th><th>reason</th></tr>"
    rows = []
    for point in points:
        record = by_number[point.number]
        cells = [
            str(point.number),
            point.state,
            point.kind if point.plotted else "not plotted (no latency)",
            f"{point.accuracy:.4f}" if point.accuracy is not None else "",
            f"{point.latency_ms:.2f}" if point.latency_ms is not None else "",
            f"{record.params_count:,}" if record.params_count is not None else "",
            point.reason or "",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    return f"<table class=\"trials\">{header}{''.join(rows)}</table>"


def read_spec_text(recorded: str | None, stored_yaml: Any, out: Path | None) -> str | None:
    """Return a trial's spec YAML from its file, or from the copy stored in the trial.

    A worker on another machine writes the spec file there, so the trial's ``spec_yaml``
    user attribute is the fallback.
    """
    path = resolve_artifact(recorded, out, "specs")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as error:
            log.warning("cannot read spec %s: %s", path, error.strerror)
    return stored_yaml if isinstance(stored_yaml, str) else None


def read_spec_data(recorded: str | None, stored_yaml: Any, out: Path | None) -> Any:
    """Return a trial's spec as plain data, without validating it; None when unreadable."""
    text = read_spec_text(recorded, stored_yaml, out)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        log.warning("invalid spec YAML of %s: %s", recorded, error)
        return None


def _script_json(data: Any) -> str:
    """Serialise ``data`` for a ``<script>`` element: no ``<``, ``>`` or ``&`` can end it early."""
    text = json.dumps(data, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def redact_url(url: str) -> str:
    """Hide the password of a database URL."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mega(count: Any) -> str:
    return f"{count / 1e6:.1f} M" if isinstance(count, (int, float)) else "?"


def _plain_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m search.dashboard",
        description="Write a self-contained Pareto report (accuracy against latency) of a search, "
        "then serve optuna-dashboard for its study on 127.0.0.1.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--out", type=Path, help="output folder of a search run; its study.db is read and report.html written there")
    source.add_argument("--storage", help="Optuna storage URL of the study (for example postgresql://user@host/db)")
    parser.add_argument("--study-name", help="study to read (default: the only study in the storage)")
    parser.add_argument("--budget-ms", type=float, help="latency budget in milliseconds per image (default: the budget the study records)")
    parser.add_argument("--report", type=Path, help="report file to write (default: report.html under --out, or in the working folder)")
    parser.add_argument("--serve", action=argparse.BooleanOptionalAction, default=True,
                        help="serve optuna-dashboard for the study after writing the report (default: serve)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of optuna-dashboard on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the report's path")
    args = parser.parse_args(argv)
    if args.budget_ms is not None and args.budget_ms <= 0:
        parser.error(f"--budget-ms must be positive, got {args.budget_ms:g}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in [0, 65535], got {args.port}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)

    try:
        report, study, points = write_report(
            out=args.out, storage=args.storage, study_name=args.study_name, budget_ms=args.budget_ms, report=args.report
        )
        print(f"report: {report} ({len(points)} finished trials, {sum(point.front for point in points)} on the Pareto front)")
        if not args.serve:
            return 0
        server = serve_dashboard(storage_url(args.out, args.storage), args.port)
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"optuna-dashboard: http://127.0.0.1:{server.server_port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
