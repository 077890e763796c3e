"""The HTML report opens in a real headless browser with no console errors, and shows its charts and
tables with the numbers it was given."""

import json
from pathlib import Path

import numpy as np
import pytest

from valuerec.report.html import ReportInputs, decile_table, gain_curve, load_results, write_report

from browser_support import needs_chromium, report_page

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def sample_inputs(tmp_path) -> ReportInputs:
    rng = np.random.default_rng(0)
    y = rng.lognormal(3, 1, 300) * (rng.random(300) < 0.6)
    p = y * rng.lognormal(0, 0.5, 300) + 1
    res = {"protocol": "R2", "dataset": "toy", "device": "cpu",
           "models": {"popularity": {"metrics": {"ndcg@20": 0.1234, "recall@20": 0.0567}, "train_seconds": 0.1},
                      "transformer": {"metrics": {"ndcg@20": 0.2345, "recall@20": 0.0789}, "train_seconds": 12.0}}}
    d = tmp_path / "results"
    d.mkdir()
    (d / "r2_toy.json").write_text(json.dumps(res))
    return ReportInputs(
        title="test report", results=load_results(d),
        value_eval={"y_true": y, "y_pred": p, "churn_true": y == 0, "churn_prob": 1 / (1 + p), "label": "toy"},
        training_curves={"epochs": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5], "val_ndcg@10": [0.1, 0.2, 0.25]},
        lifecycle={"sizes": {"new": 3, "retained": 5, "lapsed": 2}, "transitions": {"new": {"retained": 2, "lapsed": 1}},
                   "from": "a", "to": "b"},
        examples=[{"user_id": "u1", "stage": "retained", "reason": "rule x",
                   "value": {"expected_value": 12.5, "p_buy": 0.7, "churn_prob": 0.3},
                   "history": [{"time": "2011-01-01", "event_type": "purchase", "item_id": "A", "text": "MUG"}],
                   "recommendations": [{"item_id": "B", "text": "CUP"}],
                   "influences": [{"item_id": "A", "text": "MUG", "effect": 0.25}]}],
    )


def test_gain_curve_and_deciles_known_cases():
    y = np.array([0.0, 10.0, 30.0, 60.0])
    xs, cum, ideal = gain_curve(y, y, points=5)
    assert cum == ideal and cum[-1] == pytest.approx(1.0) and cum[1] == pytest.approx(0.6)
    _, rev, _ = gain_curve(y, -y, points=5)
    assert rev[1] == pytest.approx(0.0)
    dec = decile_table(np.arange(20.0), np.arange(20.0))
    assert len(dec) == 10 and dec[0]["actual"] == pytest.approx(18.5)


@needs_chromium
def test_report_in_headless_chromium(tmp_path):
    out = write_report(sample_inputs(tmp_path), tmp_path / "report.html")
    with report_page(out) as (page, errors):
        assert errors == []
        for chart in ["gain-chart", "decile-chart", "roc-chart", "stage-chart", "training-chart"]:
            n = page.locator(f"#{chart} .main-svg").count()
            assert n > 0, chart
            assert page.locator(f"#{chart} path.js-line, #{chart} g.point path, #{chart} .trace").count() > 0, chart
        cell = page.locator("section[data-result='r2_toy'] td[data-metric='ndcg@20']").first
        assert cell.inner_text().startswith("0.1234")
        assert page.locator("table.deciles tbody tr").count() == 10
        assert page.locator("article.user .influences li").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_bad_result_files_are_named_and_left_out_and_nav_links_only_present_sections(tmp_path):
    from valuerec.report.html import render
    d = tmp_path / "results"
    d.mkdir()
    good = {"protocol": "R2", "models": {"popularity": {"metrics": {"ndcg@20": 0.1}}}}
    (d / "good.json").write_text(json.dumps(good))
    for name, text in [("str_models", '{"models": "oops"}'), ("a_list", "[1]"), ("int_entry", '{"models": {"x": 5}}'),
                       ("broken", "{not json")]:
        (d / f"{name}.json").write_text(text)
    skipped = []
    res = load_results(d, skipped)
    assert list(res) == ["good"]
    assert sorted(s.split(":")[0] for s in skipped) == ["a_list.json", "broken.json", "int_entry.json",
                                                         "str_models.json"]
    page = render(ReportInputs(title="t", results=res, notes=skipped))
    assert "broken.json: not readable JSON" in page and "<a href='#benchmarks'>" in page
    for gone in ("#value", "#training", "#examples", "#lifecycle"):       # sections this report does not have
        assert f"href='{gone}'" not in page
    (tmp_path / "x").mkdir()
    full = render(sample_inputs(tmp_path / "x"))
    assert all(f"href='#{i}'" in full and f"id='{i}'" in full
               for i in ("benchmarks", "value", "lifecycle", "training", "examples"))
