"""How the commands print an error: one line, with user data (ids, item text, file names) escaped
so that brackets in them are shown as they are, not read as console markup."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from valuerec.data.dataset import catalogue_overlap_note  # noqa: F401  (the commands' import place)


def print_error(console: Console, message) -> None:
    console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def cell(value) -> str:
    """A table cell showing ``value`` literally."""
    return escape("" if value is None else str(value))


