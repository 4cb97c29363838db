"""What the CLI commands share on the terminal: the progress bar and the summary table.

rich is imported inside each function, so ``koquant --help`` stays light.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def progress_bar():
    """The progress bar every long command reports on (to stderr, so stdout can hold JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A titled table of strings, printed to stdout."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    Console().print(t)
