"""valuerec: one behaviour transformer for recommendations, value, churn and lifecycle."""

__version__ = "0.1.0"
