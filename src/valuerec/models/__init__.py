"""Every model registers itself here under its name (``valuerec bench --models NAME``)."""

from valuerec.models import popularity  # noqa: F401
from valuerec.models import implicit_models, itemknn, tifuknn  # noqa: F401
from valuerec.models import transformer, transformer_value  # noqa: F401
from valuerec.models.base import MODEL_REGISTRY, Recommender, load_model  # noqa: F401

# the model classes, as the README's contract names them: `from valuerec.models import ItemKNN`
from valuerec.models.implicit_models import ALS, BPR  # noqa: E402,F401
from valuerec.models.itemknn import ItemKNN  # noqa: E402,F401
from valuerec.models.popularity import Popularity, RepeatPopularity  # noqa: E402,F401
from valuerec.models.tifuknn import TIFUKNN  # noqa: E402,F401
from valuerec.models.transformer import BehaviourTransformer  # noqa: E402,F401
