"""Every model registers itself here under its name (``valuerec bench --models NAME``)."""

from valuerec.models import popularity  # noqa: F401
from valuerec.models import implicit_models, itemknn, tifuknn  # noqa: F401
from valuerec.models import transformer, transformer_value  # noqa: F401
from valuerec.models.base import MODEL_REGISTRY, Recommender, load_model  # noqa: F401
