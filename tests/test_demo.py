"""The demo end to end (quick settings) and its report in a real headless browser: the charts are
drawn, the page has no console errors, and every number in the benchmark tables is the one in the
result files the demo wrote."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.schema import DataError
from valuerec.demo import run_demo

from browser_support import needs_chromium, report_page

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, quick=True)
    return out, summary


def test_demo_runs_end_to_end(demo):
    out, summary = demo
    assert (out / "store.duckdb").exists() and (out / "report.html").exists()
    assert set(summary["ranking"]) >= {"popularity", "itemknn", "transformer"}
    assert set(summary["value"]) >= {"past_spend", "lightgbm", "transformer"}
    assert sum(summary["stages"].values()) == summary["store"]["users"]  # one stage per customer
    assert len(summary["sample_user"]["recommendations"]) == 5
    ranking = json.loads((out / "results" / "demo_ranking.json").read_text())
    for key in ("protocol", "dataset", "data_sha256", "git_commit", "command", "device", "started_at", "models"):
        assert key in ranking


@needs_chromium
def test_demo_report_in_browser_matches_result_files(demo):
    out, _ = demo
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    with report_page(out / "report.html") as (page, errors):
        assert errors == []
        for chart in ("gain-chart", "decile-chart", "roc-chart", "stage-chart", "training-chart"):
            assert page.locator(f"#{chart} .main-svg").count() > 0, chart
        assert page.locator("article.user").count() >= 1
        assert page.locator("article.user .influences li").count() >= 1
        checked = 0
        for name, res in results.items():
            for model, entry in res["models"].items():
                row = page.locator(f"section[data-result='{name}'] tbody tr", has=page.locator(f"th:text-is('{model}')"))
                for metric in ("ndcg@20", "recall@20", "gini", "auc"):
                    v = entry["metrics"].get(metric)
                    if v is None:
                        continue
                    shown = row.locator(f"td[data-metric='{metric}']").first.inner_text().split()[0]
                    assert float(shown) == pytest.approx(v, abs=5e-5), (name, model, metric)
                    checked += 1
        assert checked >= 8
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo_report.png"), full_page=True)


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--seed", "-1"], "--seed"),
    (["--out", "{d}/afile"], "--out {d}/afile: is a file; give a directory"),
])
def test_demo_bad_settings_fail_before_any_work(tmp_path, extra, message):
    (tmp_path / "afile").write_text("x")
    out = ["--out", str(tmp_path / "demo")] if "--out" not in extra else []
    res = CliRunner().invoke(app, ["demo", "--quick"] + out + [e.format(d=tmp_path) for e in extra])
    said = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and message.format(d=tmp_path) in said, res.output
    assert not (tmp_path / "demo").exists()


def test_run_demo_checks_epochs_first(tmp_path):
    with pytest.raises(DataError, match="epochs=-1"):
        run_demo(tmp_path / "demo", epochs=-1, quick=True)
    assert not (tmp_path / "demo").exists()


def test_why_line_lists_only_events_that_raised_the_score():
    """The demo's "why X first" lists the events with a positive effect, largest first (it used to list
    the largest |effect|, counter-evidence included), or says that none raised it."""
    import pandas as pd

    from valuerec.demo import why_line

    df = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"], "text": ["A", None, "C", "D", "E"],
                       "effect": [-0.9, 0.1, -0.5, 0.3, 0.2]})
    line = why_line("x", df)
    assert line == "  why x first: d D (+0.300); e E (+0.200); b (+0.100)"
    assert "why x first: no event" in why_line("x", df[df["effect"] < 0])


def test_the_demo_never_adds_to_a_store_it_did_not_write(demo, tmp_path):
    import pandas as pd

    from valuerec.data.ingest import file_sha256
    from valuerec.data.store import EventStore
    from valuerec.demo import demo_data_path, refuse_foreign_store
    out, _ = demo
    sha = file_sha256(demo_data_path())
    refuse_foreign_store(out / "store.duckdb", sha)          # its own store: a rerun may reuse it
    mine = tmp_path / "mine"
    mine.mkdir()
    with EventStore(mine / "store.duckdb") as st:
        st.add_events(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [pd.Timestamp("2024-01-01")],
                                    "event_type": ["view"], "value": [0.0], "quantity": [1.0]}))
    with pytest.raises(DataError, match="holds 1 events that are not \\(only\\) the bundled sample's"):
        run_demo(mine, quick=True)
    with EventStore(mine / "store.duckdb", read_only=True) as st:
        assert st.count_events() == 1
    with pytest.raises(DataError, match="cannot create it"):
        run_demo(Path("/proc/valuerec-demo"), quick=True)
