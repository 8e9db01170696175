"""Pareto dashboard: front, budget, report page (also in headless Chromium) and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from search.dashboard import (  # noqa: E402
    build_points,
    main,
    load_study,
    read_spec_text,
    serve_dashboard,
    spec_summary,
    study_budget_ms,
    write_report,
)
from search.study import study_records  # noqa: E402

TINY_SPEC = """\
name: {name}
input_shape: [112, 112, 3]
blocks:
  - {{block: conv_unit, name: stem, filters: 32, kernel_size: 3, strides: 4, bits: 32}}
  - {{block: lfe, name: lfe, filters: {filters}, bits: 1, mixing: grouped, mixing_groups: 1}}
  - {{block: embedding, name: embedding, filters: 32, kernel_size: 2, strides: 2}}
"""
BUDGET_MS = 10.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every network request goes to a closed local port, so a page that fetches anything fails.
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]
# (number, state, accuracy, latency ms, lfe filters, reason, intermediate accuracy)
TRIALS = [
    (0, "COMPLETE", 0.80, 4.0, 32, None, None),
    (1, "COMPLETE", 0.75, 5.0, 32, None, None),
    (2, "COMPLETE", 0.85, 8.0, 64, None, None),
    (3, "COMPLETE", 0.90, 12.0, 64, None, None),
    (4, "PRUNED", None, 15.0, 96, "over budget: 15.00 ms > 10 ms", None),
    (5, "PRUNED", None, 6.0, 64, "pruned after epoch 1 at accuracy 0.7000", 0.70),
    (6, "FAIL", None, None, 96, "ConversionError: LCE conversion of 'tiny_trial0006' failed", None),
]
FINISHED = len(TRIALS)
PLOTTED = sum(1 for trial in TRIALS if trial[3] is not None)


def add_trial(
    study: Any,
    out: Path,
    number: int,
    state: str,
    accuracy: float | None,
    latency_ms: float | None,
    filters: int,
    reason: str | None = None,
    intermediate: float | None = None,
    *,
    weights: bool = False,
    spec: str = TINY_SPEC,
) -> None:
    """Add a finished trial with the user attributes the search records.

    ``spec`` is a template of the trial's spec with ``{name}`` and ``{filters}`` fields.
    """
    name = f"tiny_trial{number:04d}"
    spec_path = out / "specs" / f"{name}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec.format(name=name, filters=filters), encoding="utf-8")
    attrs: dict[str, Any] = {"spec": str(spec_path), "worker": "test:1"}
    if latency_ms is not None:
        attrs.update(
            latency_ms=latency_ms,
            latency={"median_ms": latency_ms, "runs": 30, "warmup": 5, "spread_ms": 0.1,
                     "target": {"kind": "local", "name": "local"}, "options": {"use_xnnpack": True},
                     "board_state": {"before": {}, "after": {}}},
            binary_macs=1_200_000 * filters // 32,
            float_macs=2_400_000,
            params_count=10_000 + number,
            size_bytes=20_000.0,
            binary_mac_share=0.4,
            lce_ops={"LceBconv2d": 3, "CONV_2D": 2},
            float_fallbacks=[],
        )
    if state == "COMPLETE":
        attrs.update(accuracy_std=0.02, auc=0.9)
        if weights:
            attrs["weights"] = str(out / "models" / f"{name}.weights.h5")
    if reason is not None:
        attrs["reason"] = reason
    study.add_trial(
        optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state),
            value=accuracy,
            params={"lfe.filters": filters},
            distributions={"lfe.filters": optuna.distributions.CategoricalDistribution([32, 64, 96])},
            user_attrs=attrs,
            intermediate_values={0: intermediate} if intermediate is not None else None,
        )
    )


def make_study(
    out: Path, trials: list[tuple] = TRIALS, *, name: str = "tiny", weights: bool = False, spec: str = TINY_SPEC
) -> Any:
    """Create ``out/study.db`` with ``trials`` as a search would have recorded them."""
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    for trial in trials:
        add_trial(study, out, *trial, weights=weights, spec=spec)
    return study


@pytest.fixture(scope="module")
def study_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = tmp_path_factory.mktemp("search")
    make_study(out)
    return out


@pytest.fixture(scope="module")
def report(study_out: Path) -> Path:
    path, _, _ = write_report(out=study_out)
    return path


def test_front_within_budget(study_out: Path) -> None:
    study = load_study(out=study_out)
    records = study_records(study)

    def front(budget_ms: float | None) -> list[int]:
        return [point.number for point in build_points(study, records, budget_ms, out=study_out) if point.front]

    assert front(BUDGET_MS) == [0, 2]
    assert front(None) == [0, 2, 3]
    assert front(3.0) == []


def test_budget_from_reasons_or_study_attr(study_out: Path, tmp_path: Path) -> None:
    study = load_study(out=study_out)
    assert study_budget_ms(study, study_records(study)) == BUDGET_MS

    recorded = make_study(tmp_path, TRIALS[:2])
    recorded.set_user_attr("budget_ms", 7.5)
    assert study_budget_ms(recorded, study_records(recorded)) == 7.5


def test_points_classify_every_trial(study_out: Path) -> None:
    study = load_study(out=study_out)
    records = study_records(study)
    points = {point.number: point for point in build_points(study, records, BUDGET_MS, out=study_out)}

    assert {number: point.kind for number, point in points.items()} == {
        0: "trained", 1: "trained", 2: "trained", 3: "trained",
        4: "over budget", 5: "pruned in training", 6: "not trained",
    }
    assert points[5].accuracy == 0.70
    assert points[4].accuracy is None
    assert not points[6].plotted
    assert [number for number, point in points.items() if point.front] == [0, 2]
    assert points[3].export is None


def test_hover_shows_architecture_and_statistics(study_out: Path) -> None:
    study = load_study(out=study_out)
    point = build_points(study, study_records(study), BUDGET_MS, out=study_out)[2]
    hover = "\n".join(point.hover)

    assert "lfe (lfe) filters=64 bits=1 mixing=grouped mixing_groups=1" in hover
    assert "stem (conv_unit) filters=32 kernel_size=3 strides=4 bits=32" in hover
    assert "MACs: 2.4 M binary, 2.4 M float" in hover
    assert "binary-kernel share (LceBconv2d MACs): 40.0 %" in hover
    assert "params 10,002" in hover
    assert "accuracy 0.8500 \u00b1 0.0200, AUC 0.9000" in hover


def test_spec_found_under_out_when_moved(tmp_path: Path) -> None:
    original = tmp_path / "first"
    study = make_study(original, TRIALS[:1])
    moved = tmp_path / "moved"
    shutil.move(str(original), str(moved))
    study = load_study(out=moved)
    point = build_points(study, study_records(study), None, out=moved)[0]

    assert point.architecture[0].startswith("stem (conv_unit)")


def test_spec_summary_skips_malformed_blocks() -> None:
    summary = spec_summary({"blocks": [{"block": "lfe", "name": "lfe", "filters": 64, "pad_values": 1.0}, "junk"]})

    assert summary == ["lfe (lfe) filters=64"]
    assert spec_summary(None) == []


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text(encoding="utf-8")

    assert not re.search(r"(src|href|action)\s*=\s*[\"']?\s*(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"https?://|@import|\bfetch\(|XMLHttpRequest", page)
    assert "<script src" not in page
    assert "<link" not in page


def test_report_embeds_points_and_front_table(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="plot-data">(.*?)</script>', page, re.S).group(1))

    assert len(data["points"]) == PLOTTED
    assert data["budget_ms"] == BUDGET_MS
    assert sorted(point["number"] for point in data["points"] if point["front"]) == [0, 2]
    assert f'data-finished="{FINISHED}"' in page
    assert 'data-unplotted="1"' in page
    assert f"python -m search.export --out {report.parent} --trial 0 --to exports/tiny_trial0000 --data DATA" in page
    assert "--trial 2 --to exports/tiny_trial0002" in page
    assert "--trial 1 " not in page
    assert "ConversionError: LCE conversion of &#x27;tiny_trial0006&#x27; failed" in page


def test_report_escapes_script_end(tmp_path: Path) -> None:
    trials = [(0, "PRUNED", None, 3.0, 32, "invalid spec: </script><b>x</b>", None)]
    make_study(tmp_path, trials)
    page = write_report(out=tmp_path)[0].read_text(encoding="utf-8")

    assert "</script><b>" not in page
    assert "invalid spec: &lt;/script&gt;" in page


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not found; .ci/install-chromium.sh installs it")


def run_chromium(page: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_offline_in_chromium(report: Path, tmp_path: Path) -> None:
    dump = run_chromium(report, tmp_path / "profile-dom", "--dump-dom")
    body = re.search(r"<body[^>]*>", dump.stdout)

    assert dump.returncode == 0, dump.stderr[-2000:]
    assert body is not None, dump.stdout[:2000]
    assert f'data-points="{PLOTTED}"' in body.group(0)
    assert 'data-front="2"' in body.group(0)
    assert f'data-finished="{FINISHED}"' in body.group(0)


def test_report_screenshot(report: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    shot = run_chromium(report, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,900")

    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
    runs = Path(__file__).resolve().parents[1] / "runs"
    if runs.is_dir():
        shutil.copyfile(screenshot, runs / "dashboard-screenshot.png")


def test_main_writes_report(study_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "page.html"
    code = main(["--out", str(study_out), "--report", str(target), "--budget-ms", "9", "--no-serve", "--quiet"])
    output = capsys.readouterr().out

    assert code == 0
    assert f"report: {target} ({FINISHED} finished trials, 2 on the Pareto front)" in output
    assert "Latency budget: 9 ms." in target.read_text(encoding="utf-8")


def test_main_storage_url(study_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "page.html"
    storage = f"sqlite:///{study_out / 'study.db'}"
    code = main(["--storage", storage, "--study-name", "tiny", "--report", str(target), "--no-serve", "--quiet"])

    assert code == 0
    assert "--storage sqlite:///" in target.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "{missing}"], r"error: study database not found: .*study\.db; pass the --out folder of a search run"),
        (["--storage", "{two}"], r"error: the storage has 2 studies \(first, second\); pass --study-name to choose one"),
        (["--storage", "{two}", "--study-name", "third"], r"error: study 'third' not found in sqlite:///.*; studies there: first, second"),
    ],
)
def test_main_errors(arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("first", "second"):
        optuna.create_study(study_name=name, storage=storage)
    filled = [argument.format(missing=tmp_path / "missing", two=storage) for argument in arguments]
    code = main([*filled, "--no-serve"])

    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "missing").exists()


def test_main_rejects_bad_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", ".", "--budget-ms", "0"]) == 2
    assert "--budget-ms must be positive, got 0" in capsys.readouterr().err


def test_serve_dashboard_answers_on_loopback(study_out: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    server = serve_dashboard(f"sqlite:///{study_out / 'study.db'}", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # No proxy from the environment: the request must go straight to the loopback server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{server.server_port}/api/studies", timeout=30) as response:
            studies = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert server.server_address[0] == "127.0.0.1"
    assert [study["study_name"] for study in studies["study_summaries"]] == ["tiny"]


def test_pruned_point_uses_accuracy_by_epoch(tmp_path: Path) -> None:
    study = make_study(tmp_path, [(0, "PRUNED", None, 6.0, 32, "pruned after epoch 3 of 9 at accuracy 0.6500", None)])
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={"latency_ms": 5.0, "accuracy_by_epoch": {"1": 0.6, "10": 0.62, "3": 0.65}},
        )
    )
    points = build_points(study, study_records(study), None, out=tmp_path)

    assert points[0].kind == "not trained"
    assert points[1].kind == "pruned in training"
    assert points[1].accuracy == 0.62


def test_spec_read_from_trial_copy(tmp_path: Path) -> None:
    text = TINY_SPEC.format(name="copy", filters=32)

    assert read_spec_text(str(tmp_path / "elsewhere" / "copy.yaml"), text, tmp_path) == text
    assert read_spec_text(None, None, tmp_path) is None


def test_report_of_pareto_objective_study(tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="pareto", storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["maximize", "minimize"]
    )
    study.set_user_attr("budget_ms", 10.0)
    for number, (accuracy, latency_ms) in enumerate([(0.80, 4.0), (0.85, 8.0), (0.78, 6.0)]):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, values=[accuracy, latency_ms],
                user_attrs={"latency_ms": latency_ms, "spec": str(tmp_path / f"trial{number}.yaml")},
            )
        )
    report, _, points = write_report(out=tmp_path)

    assert [point.number for point in points if point.front] == [0, 1]
    assert "Latency budget: 10 ms." in report.read_text(encoding="utf-8")
