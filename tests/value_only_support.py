"""A value-only transformer built through the CLI: a plain payment log (customer, date, amount; no
items) ingested as purchases, then trained with next_item_weight=0 (value and churn heads only)."""

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from valuerec.cli import app

# value and churn heads only, tiny, one epoch
CONFIG = ('{"d_model": 16, "n_layers": 1, "epochs": 1, "next_item_weight": 0, "value_weight": 1, '
          '"churn_weight": 1, "horizon_days": 30, "progress": false}')


def train_value_only(tmp):
    """Ingest the log into ``tmp/pay.duckdb`` and train ``tmp/m``: (store, model dir, events, train result)."""
    rng = np.random.default_rng(0)
    rows = [(f"c{u}", pd.Timestamp("2023-01-01") + pd.Timedelta(days=int(d)), round(float(rng.gamma(2, 20)), 2))
            for u in range(30) for d in np.sort(rng.integers(0, 200, size=1 + u % 7))]
    csv = tmp / "payments.csv"
    pd.DataFrame(rows, columns=["customer", "date", "amount"]).to_csv(csv, index=False)
    runner, store = CliRunner(), tmp / "pay.duckdb"
    r = runner.invoke(app, ["ingest", str(csv), "--store", str(store), "--user-col", "customer", "--time-col", "date",
                            "--value-col", "amount", "--event-type", "purchase"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "m"),
                            "--device", "cpu", "--config", CONFIG])
    assert r.exit_code == 0, r.output
    return store, tmp / "m", len(rows), r
