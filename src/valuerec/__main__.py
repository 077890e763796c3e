"""``python -m valuerec``: the same command line as the ``valuerec`` script (for machines where the
package is on PYTHONPATH but not installed)."""
from valuerec.cli import app

if __name__ == "__main__":
    app()
