"""The one rich progress bar every long loop shows: steps, elapsed, time left and a status text."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, status_field: str = "status") -> Progress:
    """Tasks added to it take a `<status_field>=` text (losses, accuracy) shown after the bar."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn(f"{{task.fields[{status_field}]}}"),
                    disable=not enabled)
