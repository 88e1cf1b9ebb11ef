"""What the CLI prints: rich tables of trials and of each budget's choice, and tune's progress."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from latts.core.records import STATISTICS, LatencyStatistic, TrialSummary


def seconds(value: float) -> str:
    # Four significant digits: demo latencies are hundredths of a second, and budgets compare exactly.
    return f"{value:.4g}"


def trials_table(title: str, trials: list[TrialSummary], statistic: LatencyStatistic) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("trial", "branches", "speculative", "aggregator", "verifier", "accuracy (95% CI)"):
        table.add_column(column, justify="right" if column in ("trial", "branches") else "left")
    for stat in STATISTICS:
        table.add_column(f"{stat} s" + (" *" if stat == statistic else ""), justify="right")
    table.add_column("accept len", justify="right")
    table.add_column("lossless", justify="left")
    for t in trials:
        c = t.config
        speculative = f"{c.speculative_method} k={c.num_speculative_tokens}" if c.speculative_method else "none"
        lo, hi = t.accuracy_ci or (0.0, 0.0)
        table.add_row(
            f"{t.study}#{t.number}",
            str(c.branches),
            speculative,
            c.aggregator,
            c.verifier or "-",
            f"{t.accuracy:.1%} ({lo:.0%}-{hi:.0%})",
            *(seconds(t.latency_s.get(s)) for s in STATISTICS),
            f"{t.mean_acceptance_length:.2f}" if t.mean_acceptance_length else "-",
            _lossless(t),
        )
    return table


def _lossless(trial: TrialSummary) -> str:
    """The answer-shift test of a speculative trial against its baseline without speculation."""
    if trial.lossless is None:
        return "-"
    if trial.lossless.verdict == "untested":
        return "untested"
    word = "LOSSY" if trial.lossless.verdict == "lossy" else "yes"
    return f"{word} (p={trial.lossless.p_value:.2g} vs #{trial.lossless.baseline_trial})"


def best_table(bests: dict[float, TrialSummary | None], statistic: LatencyStatistic) -> Table:
    table = Table(title=f"Best config per budget ({statistic} latency)", title_justify="left")
    for column in ("budget s", "trial", "config", "accuracy", f"{statistic} s"):
        table.add_column(column)
    for budget, t in bests.items():
        if t is None:
            table.add_row(f"{budget:g}", "-", "nothing fits", "-", "-")
        else:
            table.add_row(
                f"{budget:g}", f"{t.study}#{t.number}", t.config.label(), f"{t.accuracy:.1%}", seconds(t.latency_s.get(statistic))
            )
    return table


class TuneProgress:
    """tune's live progress line on stderr: trials done, failed and in flight, time, best accuracy so far."""

    def __init__(self, console: Console, study: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done  {task.fields[failed]} failed  {task.fields[in_flight]} in flight"),
            TimeElapsedColumn(),
            TextColumn("remaining"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
        )
        self.study = study
        self.task = None

    def __enter__(self) -> TuneProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, state) -> None:
        """Show the controller's TuneState."""
        best = "  ".join(f"<= {b:g}s: {t.accuracy:.1%}" if t else f"<= {b:g}s: -" for b, t in state.best.items())
        fields = {"failed": state.failed, "in_flight": state.in_flight, "best": f"best so far  {best}"}
        if self.task is None:  # a resumed study starts part done; the time estimate counts this run only
            self.task = self.progress.add_task(self.study, total=state.target, completed=state.done, **fields)
        self.progress.update(self.task, total=state.target, completed=state.done, **fields)
