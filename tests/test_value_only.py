"""A value-only transformer (trained with next_item_weight=0 on a plain transaction log) cannot
recommend: `recommend` and the service say so, and the report leaves the recommendation examples out."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app

KEY = "reader-key-123"


@pytest.fixture(scope="module")
def value_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("value_only")
    rng = np.random.default_rng(0)
    rows = [(f"c{u}", pd.Timestamp("2023-01-01") + pd.Timedelta(days=int(d)), round(float(rng.gamma(2, 20)), 2))
            for u in range(30) for d in np.sort(rng.integers(0, 200, size=1 + u % 7))]
    csv = tmp / "payments.csv"
    pd.DataFrame(rows, columns=["customer", "date", "amount"]).to_csv(csv, index=False)
    runner, store = CliRunner(), tmp / "pay.duckdb"
    r = runner.invoke(app, ["ingest", str(csv), "--store", str(store), "--user-col", "customer", "--time-col", "date",
                            "--value-col", "amount", "--event-type", "purchase"])
    assert r.exit_code == 0, r.output
    cfg = ('{"d_model": 16, "n_layers": 1, "epochs": 1, "next_item_weight": 0, "value_weight": 1, '
           '"churn_weight": 1, "horizon_days": 30, "progress": false}')
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "m"),
                            "--device", "cpu", "--config", cfg])
    assert r.exit_code == 0, r.output
    return tmp, store, tmp / "m"


def test_recommend_refuses_a_value_only_model(value_only):
    tmp, store, model = value_only
    for policy in ("plain", "value_aware"):
        r = CliRunner().invoke(app, ["recommend", "--model", str(model), "--store", str(store), "--user", "c3",
                                     "--policy", policy])
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error:") and "without a next-item head" in r.output, r.output
        assert "Traceback" not in r.output and "rank" not in r.output


def test_service_answers_501_for_recommendations_of_a_value_only_model(value_only):
    from fastapi.testclient import TestClient

    from valuerec.serving.app import create_app
    from valuerec.serving.settings import Settings

    tmp, store, model = value_only
    settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(model),
                                  "VALUEREC_API_KEYS": f"{KEY}:read"})
    with TestClient(create_app(settings)) as c:
        for q in ("k=3&policy=value_aware", "k=3", "policy=popular", "policy=stage"):
            r = c.get(f"/v1/users/c3/recommendations?{q}", headers={"X-API-Key": KEY})
            assert r.status_code == 501, (q, r.text)
            assert "without a next-item head" in r.json()["detail"]
        r = c.get("/v1/users/c3/value", headers={"X-API-Key": KEY})    # what the model can answer
        assert r.status_code == 200, r.text


def test_report_of_a_value_only_model_leaves_out_the_recommendation_examples(value_only):
    from valuerec.report.build import build_inputs

    tmp, store, model = value_only
    inputs = build_inputs(model, store, None)
    assert inputs.examples == [] and inputs.value_eval is not None
    assert any("without a next-item head" in n for n in inputs.notes)
    out = tmp / "r.html"
    r = CliRunner().invoke(app, ["report", "--model", str(model), "--store", str(store), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "without a next-item head" in out.read_text()
