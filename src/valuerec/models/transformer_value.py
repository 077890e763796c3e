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
    # One CPU-sized setting (value_protocol would pick among several by validation Gini + AUC).
    grid = [
        {"value_weight": 1.0, "churn_weight": 1.0, "next_item_weight": 0.5, "use_values": True,
         "loss": "sampled", "negatives": "in-batch", "batch_size": 256, "value_step_days": 28.0,
         "epochs": e, "d_model": 64, "max_len": 50, "dropout": 0.2, "progress": False}
        for e in (6,)
    ]
