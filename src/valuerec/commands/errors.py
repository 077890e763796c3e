"""How the commands print an error: one line, with user data (ids, item text, file names) escaped
so that brackets in them are shown as they are, not read as console markup."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def print_error(console: Console, message) -> None:
    console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def cell(value) -> str:
    """A table cell showing ``value`` literally."""
    return escape("" if value is None else str(value))


def catalogue_overlap_note(catalogue, item_ids) -> str | None:
    """A note when a store's item events share no item with the model's catalogue (a store of other
    data, or a model trained elsewhere): the model then sees histories of unknown items only."""
    if catalogue is None:
        return None
    ids = {str(i) for i in item_ids if i is not None and i == i}
    if not ids or any(i in catalogue.index for i in ids):
        return None
    return (f"none of the store's {len(ids):,} items is in the model's catalogue of {len(catalogue):,}: is this "
            "the store the model was trained on? Predictions use the histories' times and values only")
