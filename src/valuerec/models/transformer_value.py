"""The behaviour transformer as a ``ValueModel`` (the V1 / ``bench value`` contract), so it runs beside
the value baselines: same histories, same cut-offs, same metrics. The transformer keeps its next-item
head (multi-task) unless the grid turns it off."""

from __future__ import annotations

from valuerec.models.transformer import BehaviourTransformer
from valuerec.models.value_baselines import RecommenderValueModel, register_value


@register_value("transformer")
class TransformerValue(RecommenderValueModel):
    recommender_cls = BehaviourTransformer
    cutoff_key = "data_end"
    # CPU-sized settings, chosen among on the validation cut-off (Gini + churn AUC): a hidden layer in
    # the heads; value labels from the newest one or two cut-offs (28 days apart); beside the encoder
    # the heads see the V1 baselines' RFM features ("rfm") or 8 summary numbers ("summary", the
    # setting chosen before the RFM option existed).
    grid = [
        {"value_weight": 1.0, "churn_weight": 1.0, "next_item_weight": 0.5, "use_values": True,
         "loss": "sampled", "negatives": "in-batch", "batch_size": 256, "value_step_days": 28.0,
         "value_hidden": 64, "value_max_cuts": cuts, "epochs": e, "d_model": 64, "max_len": 50,
         "dropout": 0.2, "progress": False, "value_features": features}
        for features, cuts, e in (("summary", 2, 6), ("rfm", 1, 6), ("rfm", 2, 4), ("rfm", 2, 6))
    ]
    # the setting the V1 run chose on validation (benchmarks/results/v1_online_retail.json): what the
    # demo trains
    chosen = grid[1]
