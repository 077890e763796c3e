"""A value-only transformer (trained with next_item_weight=0 on a plain transaction log) cannot
recommend: `recommend` and the service say so, and the report leaves the recommendation examples out."""

import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from value_only_support import train_value_only

KEY = "reader-key-123"


@pytest.fixture(scope="module")
def value_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("value_only")
    store, model, _, _ = train_value_only(tmp)
    return tmp, store, model


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
        # explanations: of its value by default; an item's score it does not have is 501, not a table
        r = c.get("/v1/users/c3/explain", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["explanation"]["target_kind"] == "value", r.text
        r = c.get("/v1/users/c3/explain?target=some-item", headers={"X-API-Key": KEY})
        assert r.status_code == 501 and "without a next-item head" in r.json()["detail"], r.text


def test_explain_of_a_value_only_model_explains_its_value(value_only):
    tmp, store, model = value_only
    r = CliRunner().invoke(app, ["explain", "--model", str(model), "--store", str(store), "--user", "c3", "--json"])
    assert r.exit_code == 0, r.output
    assert '"value"' in r.output and "score of item" not in r.output
    for target in ("item", "item:x"):
        r = CliRunner().invoke(app, ["explain", "--model", str(model), "--store", str(store), "--user", "c3",
                                     "--target", target])
        assert r.exit_code == 2 and "without a next-item head" in " ".join(r.output.split()), r.output


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
