"""Plots: the files exist and hold what the issue asks for: points, frontier, budgets, choices, failed trials."""

from __future__ import annotations

import pytest
from matplotlib.collections import PathCollection

from latts.reporting.plots import PlotError, matplotlib_figure, plot_study, plotly_figure
from tests.conftest import run_latts
from tests.handmade import make_study

BUDGETS = [0.05, 0.5, 2.0]


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    url = f"sqlite:///{folder / 'latts.db'}"
    return url, make_study(url, folder).trials("hand")


def test_png_and_html_files(hand, tmp_path):
    _, trials = hand
    png = plot_study(trials, BUDGETS, "mean", tmp_path / "study.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    html = plot_study(trials, BUDGETS, "mean", tmp_path / "study.html").read_text()
    assert "<html>" in html and "Pareto frontier" in html and "B=8 draft_model(k=2)" in html


def test_matplotlib_figure_content(hand):
    _, trials = hand
    ax, strip = matplotlib_figure(trials, BUDGETS, "mean", "hand").axes
    # One scatter per speculative method (plus empty legend entries for the branch sizes), sizes grow with branches.
    scatters = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())}
    assert set(scatters) == {"speculative: none", "speculative: ngram", "speculative: draft_model"}
    assert len(scatters["speculative: none"].get_offsets()) == 2  # trials #0 and #2
    assert list(scatters["speculative: none"].get_sizes()) == [40.0, 120.0]  # 1 and 4 branches
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["Pareto frontier"].get_xdata()) == pytest.approx([0.1, 0.3, 1.0])
    assert sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--") == BUDGETS
    texts = [t.get_text() for t in ax.texts]
    # Each budget's choice is listed beside the chart, and only its number sits on the chosen point.
    assert texts[-1].splitlines() == [
        "best within each budget:",
        "1. <= 0.05 s: nothing fits",
        "2. <= 0.5 s: #1 B=4 ngram(k=4) majority (50%)",
        "3. <= 2 s: #3 B=8 draft_model(k=2) weighted_mean_logprob (100%)",
    ]
    assert all(len(text) == 1 for text in texts[:-1])
    # Error bars on both axes: the 95% intervals of latency and accuracy.
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == 2 * 3  # x and y for each speculative method
    assert ax.xaxis.get_major_formatter()(0.05, 0) == "50 ms" and ax.xaxis.get_major_formatter()(2.0, 0) == "2 s"
    # The failed trial sits apart, in the strip: one grey cross, labelled with its number.
    (crosses,) = strip.collections
    assert len(crosses.get_offsets()) == 1 and [t.get_text() for t in strip.texts] == ["#4"]
    assert strip.get_title(loc="left") == "failed trials (no latency): 1"


def test_plotly_figure_content(hand):
    _, trials = hand
    fig = plotly_figure(trials, BUDGETS, "p90", "hand")
    names = [trace.name for trace in fig.data]
    assert names == [
        "speculative: none",
        "speculative: draft_model",
        "speculative: ngram",
        "Pareto frontier",
        "failed (no latency): 1",
    ]
    frontier = fig.data[3]
    assert frontier.line.shape == "hv" and list(frontier.x) == pytest.approx([0.1, 0.37, 1.07])  # p90 latencies
    assert sorted(shape.x0 for shape in fig.layout.shapes) == BUDGETS
    assert [a.text for a in fig.layout.annotations][0] == "<= 0.05 s: nothing fits"


def test_no_failed_strip_when_nothing_failed(hand):
    _, trials = hand
    succeeded = [t for t in trials if t.state == "COMPLETE"]
    assert len(matplotlib_figure(succeeded, BUDGETS, "mean").axes) == 1
    assert [trace.name for trace in plotly_figure(succeeded, BUDGETS, "mean").data][-1] == "Pareto frontier"


def test_empty_study_still_plots(tmp_path):
    path = plot_study([], [1.0], "mean", tmp_path / "empty.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, words", [("plot.svg", ".png or .html"), ("missing/plot.png", "does not exist")])
def test_bad_path_is_one_line(tmp_path, name, words):
    with pytest.raises(PlotError, match=words.replace(".", r"\.")):
        plot_study([], [1.0], "mean", tmp_path / name)


def test_plot_cli(hand, tmp_path):
    url, _ = hand
    proc = run_latts("plot", "--study", "hand", "-o", str(tmp_path / "hand.png"), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hand.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_latts("plot", "--study", "hand", "-o", str(tmp_path / "hand.pdf"), "--storage", url)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and ".png or .html" in proc.stderr
    proc = run_latts("plot", "--study", "nope", "-o", str(tmp_path / "x.png"), "--storage", url)
    assert proc.returncode == 2 and "'nope'" in proc.stderr


def test_a_relative_budgets_range_is_shaded(hand):
    from latts.core.records import BudgetAnswer

    _, trials = hand
    answers = [
        BudgetAnswer(0.5, 1, None, True, None, None, "alone", 3, [1], (0.45, 0.6)),
        BudgetAnswer(2.0, 3, None, True, None, None, "alone", 3, [3], (2.0, 2.0)),  # absolute: nothing to shade
    ]
    ax, _ = matplotlib_figure(trials, BUDGETS, "mean", "hand", answers).axes
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches] == [pytest.approx((0.45, 0.6))]
    shapes = plotly_figure(trials, BUDGETS, "mean", "hand", answers).layout.shapes
    assert [(s.x0, s.x1) for s in shapes if s.type == "rect"] == [(0.45, 0.6)]
