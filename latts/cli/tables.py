"""What the CLI prints: rich tables of trials and of each budget's choice, and tune's progress."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from latts.core.records import BudgetAnswer, LatencyStatistic, TrialSummary
from latts.optimizer.racing import tie_reason


def seconds(value: float) -> str:
    # Four significant digits: demo latencies are hundredths of a second, and budgets compare exactly.
    return f"{value:.4g}"


def latency(trial: TrialSummary, statistic: LatencyStatistic) -> str:
    """The statistic with its 95% interval; an end no order statistic reaches shows as ? (too few problems)."""
    lo, hi = (trial.latency_ci or {}).get(statistic, (None, None))
    ends = "-".join("?" if end is None else f"{end:.3g}" for end in (lo, hi))
    return f"{seconds(trial.latency_s.get(statistic))} ({ends})"


def trials_table(title: str, trials: list[TrialSummary], statistic: LatencyStatistic) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("trial", "B", "speculative", "aggregator", "verifier", "accuracy (95% CI)", "from/timed"):
        table.add_column(column, justify="right" if column in ("trial", "B") else "left")
    table.add_column(f"{statistic} s (95% CI)", justify="right")  # the other statistics are in --json
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
            Path(c.verifier).name if c.verifier else "-",  # a local folder's name, or a hub id's
            f"{t.accuracy:.1%} ({lo:.0%}-{hi:.0%})",
            # Where the accuracy comes from, over how many problems, and how many were timed.
            f"{t.accuracy_source} {t.n_problems}/{t.n_latency_problems}",
            latency(t, statistic),
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
    return f"{word} p={trial.lossless.p_value:.2g}"


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


def budget(answer: BudgetAnswer) -> str:
    """The budget in seconds, and the range a relative budget may lie in as its reference moves."""
    low, high = answer.budget_range_s or (answer.budget_s, answer.budget_s)
    return f"{answer.budget_s:g}" if low == high else f"{answer.budget_s:g} ({low:.3g} to {high:.3g})"


def answers_table(answers: list[BudgetAnswer], trials: dict[int, TrialSummary], statistic: LatencyStatistic) -> Table:
    """Each budget's answer after its finalists raced: the choice, whether it surely fits, its margin."""
    rounds = max((a.rounds for a in answers), default=0)
    table = Table(title=f"Best config per budget ({statistic} latency; finalists timed again, {rounds} rounds)", title_justify="left")
    for column in ("budget s (range)", "trial", "config", "accuracy", f"{statistic} s (95% CI)", "fits", "vs runner-up"):
        table.add_column(column)
    for a in answers:
        if a.trial is None:
            table.add_row(budget(a), "-", "nothing fits", "-", "-", "-", "-")
            continue
        chosen = trials[a.trial]
        if a.verdict == "alone":
            versus = "no other finalist fits"
        else:
            lo, hi = a.margin_ci
            word = "beats" if a.verdict == "beats" else "tied with"
            chosen_s = chosen.latency_s.get(statistic)
            lower = ", ".join(f"#{n}" for n in a.edge if trials[n].latency_s.get(statistic) < chosen_s)
            higher = ", ".join(f"#{n}" for n in a.edge if trials[n].latency_s.get(statistic) >= chosen_s)
            sides = [f"{numbers} where the budget is {side}" for numbers, side in ((lower, "lower"), (higher, "higher")) if numbers]
            where = f"; at the edge: {' and '.join(sides)}" if sides else ""
            reason = tie_reason(a, trials)
            if reason == "lossless-twin":  # a margin of +0.0% (+0.0% to +0.0%) says less
                versus = f"{word} #{a.runner_up}, its lossless twin (the same answers){where}"
            else:
                by = " by the budget's range, not by accuracy" if reason == "budget-range" else ""
                versus = f"{word} #{a.runner_up}{by}: {a.margin:+.1%} ({lo:+.1%} to {hi:+.1%}){where}"
        table.add_row(
            budget(a),
            f"{chosen.study}#{chosen.number}",
            chosen.config.label(),
            f"{chosen.accuracy:.1%}",
            latency(chosen, statistic),
            "yes" if a.fits_confidently else "not surely",
            versus,
        )
    return table


class TuneProgress:
    """tune's live display on stderr: a progress bar of trials (done, failed, in flight, time left)
    and, below it, the best accuracy found so far within each budget."""

    def __init__(self, console: Console, study: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials  {task.fields[failed]} failed  {task.fields[in_flight]} in flight"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.best = Text()
        self.live = Live(Group(self.progress, self.best), console=console, refresh_per_second=4)
        self.study = study
        self.task = None

    def __enter__(self) -> TuneProgress:
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def update(self, state) -> None:
        """Show the controller's TuneState."""
        fields = {"failed": state.failed, "in_flight": state.in_flight}
        if self.task is None:  # a resumed study starts part done; the time estimate counts this run only
            self.task = self.progress.add_task(self.study, total=state.target, completed=state.done, **fields)
        self.progress.update(self.task, total=state.target, completed=state.done, **fields)
        best = "  ".join(f"<= {b:g} s: {t.accuracy:.1%}" if t else f"<= {b:g} s: -" for b, t in state.best.items())
        racing = "; timing each budget's finalists again" if state.racing else ""
        self.best.plain = f"best so far  {best or '(budgets wait for the reference config)'}{racing}"
