"""Accuracy-latency plots of a study: `.png` with matplotlib, `.html` (interactive) with plotly.

Every measured trial is a point (colour = speculative method, size = branches) with error bars
(95% intervals of accuracy and latency), the Pareto frontier a step line, each budget a vertical
line with the config chosen for it, and a raced relative budget's range shaded around it.
Speculative trials found lossy are hollow red rings, kept off the frontier and the choices.
Failed trials have no latency, so they sit apart in a strip of grey crosses below the chart (no
strip when nothing failed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latts.core.records import BudgetAnswer, LatencyStatistic, TrialState, TrialSummary
from latts.optimizer.frontier import completed, pareto_front
from latts.reporting.documents import answer_for

if TYPE_CHECKING:  # both libraries load only when a plot of their kind is drawn
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

FORMATS = (".png", ".html")
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
FAILED_COLOUR = "#8c8c8c"
LOSSY_COLOUR = "#d62728"
LOSSY_LABEL = "lossy speculation (kept out)"


class PlotError(Exception):
    """A plot that cannot be written; one line."""


def _method(trial: TrialSummary) -> str:
    return trial.config.speculative_method or "none"


def _marker_size(branches: int) -> float:
    # Area grows with log2(branches): 1 -> 40, 16 -> 200 (points^2), readable from 1 to 64 branches.
    return 40.0 + 40.0 * math.log2(branches)


def _hover(trial: TrialSummary, statistic: LatencyStatistic) -> str:
    return f"#{trial.number} {trial.config.label()}: {trial.accuracy:.1%}, {trial.latency_s.get(statistic):.3f} s"


def _chosen(
    trials: Sequence[TrialSummary], budgets: Sequence[float], statistic: LatencyStatistic, answers: Sequence[BudgetAnswer]
) -> list[tuple[float, TrialSummary | None]]:
    return [(budget, answer_for(trials, budget, statistic, answers=answers)) for budget in sorted(budgets)]


def _ranges(answers: Sequence[BudgetAnswer]) -> list[tuple[float, float]]:
    """Where the relative budgets may lie (shaded): their multiple of the reference's fastest and slowest round."""
    return [a.budget_range_s for a in answers if a.budget_range_s and a.budget_range_s[0] < a.budget_range_s[1]]


def _choice_text(budget: float, trial: TrialSummary | None) -> str:
    if trial is None:
        return f"<= {budget:g} s: nothing fits"
    return f"<= {budget:g} s: #{trial.number} {trial.config.label()} ({trial.accuracy:.0%})"


def plot_study(
    trials: Sequence[TrialSummary],
    budgets: Sequence[float],
    statistic: LatencyStatistic,
    path: str | Path,
    title: str = "",
    answers: Sequence[BudgetAnswer] = (),
) -> Path:
    """Write the plot to `path`; its extension picks the format. A budget with a raced answer shows it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise PlotError(f"cannot plot to {path.name!r}: use a file name ending in .png or .html")
    if not path.parent.is_dir():
        raise PlotError(f"cannot write {path}: folder {path.parent} does not exist")
    if suffix == ".png":
        matplotlib_figure(trials, budgets, statistic, title, answers).savefig(path, dpi=120)
    else:
        # The whole plotly.js goes into the file, so it opens offline.
        plotly_figure(trials, budgets, statistic, title, answers).write_html(path, include_plotlyjs=True)
    return path


def _split(trials: Sequence[TrialSummary]) -> tuple[list[TrialSummary], list[TrialSummary], list[TrialSummary]]:
    """Measured trials that count, lossy ones, failed ones."""
    lossy = [t for t in completed(trials, include_lossy=True) if t.lossy]
    return completed(trials), lossy, [t for t in trials if t.state == TrialState.FAILED]


def _methods(measured: Sequence[TrialSummary]) -> dict[str, str]:
    names = sorted({_method(t) for t in measured}, key=lambda m: (m != "none", m))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _seconds_label(value: float, _pos: object = None) -> str:
    """Plain seconds or milliseconds on a log axis: 50 ms, 1.5 s (never 10^-1)."""
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def _errors(trials: Sequence[TrialSummary], statistic: LatencyStatistic) -> tuple[list[list[float]], list[list[float]]]:
    """Error bar lengths below/above each point: latency (x) and accuracy (y) 95% intervals.

    An interval end that no order statistic reaches (too few problems for a p99) draws no bar.
    """
    x_err: list[list[float]] = [[], []]
    y_err: list[list[float]] = [[], []]
    for t in trials:
        value = t.latency_s.get(statistic)
        lo, hi = (t.latency_ci or {}).get(statistic, (None, None))
        x_err[0].append(max(value - lo, 0.0) if lo is not None else 0.0)  # max: rounding at the ends
        x_err[1].append(max(hi - value, 0.0) if hi is not None else 0.0)
        a_lo, a_hi = t.accuracy_ci or (t.accuracy, t.accuracy)
        y_err[0].append(max(t.accuracy - a_lo, 0.0))
        y_err[1].append(max(a_hi - t.accuracy, 0.0))
    return x_err, y_err


def matplotlib_figure(
    trials: Sequence[TrialSummary],
    budgets: Sequence[float],
    statistic: LatencyStatistic,
    title: str = "",
    answers: Sequence[BudgetAnswer] = (),
) -> Figure:
    """A matplotlib Figure: the chart, each budget's choice listed beside it (numbered on its point,
    so that no label covers a point), and a strip of failed trials below when there are any."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend
    from matplotlib.ticker import FuncFormatter

    measured, lossy, failed = _split(trials)
    fig = Figure(figsize=(12, 6.5 if failed else 5.5), layout="constrained")
    if failed:
        ax, strip = fig.subplots(2, 1, gridspec_kw={"height_ratios": [6, 1]})
    else:
        ax, strip = fig.subplots(1, 1), None
    for method, colour in _methods(measured).items():
        group = [t for t in measured if _method(t) == method]
        x_err, y_err = _errors(group, statistic)
        xs, ys = [t.latency_s.get(statistic) for t in group], [t.accuracy for t in group]
        ax.errorbar(xs, ys, xerr=x_err, yerr=y_err, fmt="none", ecolor=colour, alpha=0.35, linewidth=1, zorder=2)
        ax.scatter(
            xs, ys, s=[_marker_size(t.config.branches) for t in group], c=colour, alpha=0.75, edgecolors="white",
            label=f"speculative: {method}", zorder=3,
        )
    if lossy:
        ax.scatter(
            [t.latency_s.get(statistic) for t in lossy],
            [t.accuracy for t in lossy],
            s=[_marker_size(t.config.branches) for t in lossy],
            facecolors="none",
            edgecolors=LOSSY_COLOUR,
            linewidths=1.5,
            label=LOSSY_LABEL,
            zorder=3,
        )
    front = pareto_front(measured, statistic)
    if front:
        # The best accuracy reachable within a latency is a step function of that latency.
        ax.step(
            [t.latency_s.get(statistic) for t in front],
            [t.accuracy for t in front],
            where="post",
            color="black",
            linewidth=1.5,
            label="Pareto frontier",
            zorder=2,
        )
    choices = _chosen(measured, budgets, statistic, answers)
    lines = []
    for low, high in _ranges(answers):
        ax.axvspan(low, high, color="#555555", alpha=0.08, linewidth=0, zorder=0)
    for i, (budget, chosen) in enumerate(choices, start=1):
        ax.axvline(budget, color="#555555", linestyle="--", linewidth=1, zorder=1)
        ax.annotate(f"{i}", xy=(budget, 1.0), xytext=(2, -2), textcoords="offset points", fontsize=8, color="#555555", va="top")
        if chosen is not None:
            ax.annotate(
                f"{i}", xy=(chosen.latency_s.get(statistic), chosen.accuracy), xytext=(0, 9), textcoords="offset points",
                ha="center", fontsize=8, fontweight="bold", zorder=5,
            )
        lines.append(f"{i}. {_choice_text(budget, chosen)}")
    if measured or lossy or budgets:
        ax.set_xscale("log")  # latencies and budgets span orders of magnitude
        ax.xaxis.set_major_formatter(FuncFormatter(_seconds_label))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, pos: ""))
    if lines:  # beside the chart, never over a point
        ax.text(1.02, 1.0, "best within each budget:\n" + "\n".join(lines), transform=ax.transAxes, va="top", fontsize=8, wrap=True)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel(f"{statistic} latency per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs latency")
    ax.grid(True, which="major", alpha=0.3)
    for branches in sorted({t.config.branches for t in measured}):
        ax.scatter([], [], s=_marker_size(branches), c="white", edgecolors="black", label=f"B={branches} branches")
    if measured or lossy:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 0.55), fontsize=8, framealpha=0.9)
    if strip is not None:
        strip.set_yticks([])
        strip.set_xticks([])
        strip.set_xlim(-0.5, len(failed) - 0.5)
        strip.scatter(range(len(failed)), [0] * len(failed), marker="x", c=FAILED_COLOUR, s=60)
        for x, t in enumerate(failed):
            strip.annotate(f"#{t.number}", (x, 0), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
        strip.set_title(f"failed trials (no latency): {len(failed)}", fontsize=9, loc="left")
    return fig


def plotly_figure(
    trials: Sequence[TrialSummary],
    budgets: Sequence[float],
    statistic: LatencyStatistic,
    title: str = "",
    answers: Sequence[BudgetAnswer] = (),
) -> go.Figure:
    """A plotly Figure: chart on top, a failed-trial strip below when there are failed trials."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    measured, lossy, failed = _split(trials)
    rows = 2 if failed else 1
    fig = make_subplots(rows=rows, cols=1, row_heights=[0.85, 0.15] if failed else [1.0], vertical_spacing=0.08)
    for method, colour in _methods(measured).items():
        group = [t for t in measured if _method(t) == method]
        x_err, y_err = _errors(group, statistic)
        fig.add_trace(
            go.Scatter(
                x=[t.latency_s.get(statistic) for t in group],
                y=[t.accuracy for t in group],
                mode="markers",
                name=f"speculative: {method}",
                error_x={"type": "data", "symmetric": False, "arrayminus": x_err[0], "array": x_err[1], "thickness": 1},
                error_y={"type": "data", "symmetric": False, "arrayminus": y_err[0], "array": y_err[1], "thickness": 1},
                # plotly sizes are diameters; the square root keeps area proportional as in the PNG.
                marker={"color": colour, "size": [math.sqrt(_marker_size(t.config.branches)) * 1.3 for t in group]},
                text=[_hover(t, statistic) for t in group],
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
    if lossy:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_s.get(statistic) for t in lossy],
                y=[t.accuracy for t in lossy],
                mode="markers",
                name=LOSSY_LABEL,
                marker={
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": LOSSY_COLOUR, "width": 2},
                    "size": [math.sqrt(_marker_size(t.config.branches)) * 1.3 for t in lossy],
                },
                text=[f"{_hover(t, statistic)} (lossy: p={t.lossless.p_value:.2g})" for t in lossy],
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
    front = pareto_front(measured, statistic)
    if front:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_s.get(statistic) for t in front],
                y=[t.accuracy for t in front],
                mode="lines",
                line={"shape": "hv", "color": "black"},
                name="Pareto frontier",
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
    for low, high in _ranges(answers):
        fig.add_vrect(x0=low, x1=high, fillcolor="#555555", opacity=0.08, line_width=0, row=1, col=1)
    for i, (budget, chosen) in enumerate(_chosen(measured, budgets, statistic, answers)):
        # Shapes take data values on a log axis, annotations take log10 (plotly's convention).
        fig.add_vline(x=budget, line={"dash": "dash", "color": "#555555", "width": 1}, row=1, col=1)
        fig.add_annotation(
            x=math.log10(chosen.latency_s.get(statistic) if chosen else budget),
            y=chosen.accuracy if chosen else 0.02,
            text=_choice_text(budget, chosen),
            showarrow=chosen is not None,
            ax=40,
            ay=20 + 18 * i,
            font={"size": 10},
            bgcolor="rgba(255,255,255,0.8)",
            row=1,
            col=1,
        )
    if failed:
        fig.add_trace(
            go.Scatter(
                x=list(range(len(failed))),
                y=[0] * len(failed),
                mode="markers+text",
                marker={"symbol": "x", "color": FAILED_COLOUR, "size": 10},
                text=[f"#{t.number}" for t in failed],
                textposition="top center",
                hovertext=[f"#{t.number} {t.config.label()}: {t.fail_reason}" for t in failed],
                hoverinfo="text",
                name=f"failed (no latency): {len(failed)}",
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(type="log", title_text=f"{statistic} latency per problem (s)", row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy", row=1, col=1)
    if failed:
        fig.update_xaxes(visible=False, row=2, col=1)
        fig.update_yaxes(visible=False, row=2, col=1)
    fig.update_layout(title=title or "accuracy vs latency", template="plotly_white", height=650)
    return fig
