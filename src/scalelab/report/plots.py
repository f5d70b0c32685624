"""The report's figures: loss against data with the fitted laws, data variants and repetition, learning curves.

Figures are built on `matplotlib.figure.Figure` and rendered by the Agg canvas, never through pyplot, so drawing a
report changes no global backend and leaves no figure open. Text in the SVGs stays as glyph paths (matplotlib's
default `svg.fonttype`): the page shows the same letters on every machine, whatever fonts it has.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from scalelab.laws.fit import Fit
from scalelab.laws.planner import format_tokens

PANEL_SIZE = (4.0, 3.2)  # inches per panel; the page shows figures at their natural size
MIN_WIDTH = 6.5  # inches: room for a figure's title above a single panel
MAX_COLUMNS = 3
PNG_DPI = 150
EXTRAPOLATE = 4.0  # fitted lines continue, dashed, to this multiple of the largest D measured
CURVE_POINTS = 200
MAX_TRAIN_POINTS = 120  # a training curve longer than this is averaged over consecutive steps down to this many
LEGEND_ENTRY_WIDTH = 1.6  # inches a figure-level legend entry takes, at most
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "figure.titlesize": 12, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.25, "grid.linewidth": 0.6}


@dataclass(frozen=True)
class Series:
    """Observed losses of one curve of a (family, variant) group, and the law fitted to the group."""

    label: str
    variant: str
    D: np.ndarray  # tokens trained on, repeats included
    loss: np.ndarray
    fit: Fit | None = None
    fixed: dict[str, float] = field(default_factory=dict)  # law inputs constant along the curve (N, or U if repeated)
    held_out: np.ndarray | None = None  # bool per point: a backtest held it out
    predicted: np.ndarray | None = None  # the backtest's prediction at held-out points (NaN elsewhere)
    marker: str = "o"

    def law_inputs(self, D: np.ndarray) -> dict[str, np.ndarray | float]:
        """The law's inputs along D: the fixed ones, and U = D (fresh data) unless U is fixed."""
        inputs: dict[str, np.ndarray | float] = {"D": D, **self.fixed}
        if "U" in self.fit.law.inputs and "U" not in self.fixed:
            inputs["U"] = D
        return inputs


@dataclass(frozen=True)
class Comparison:
    """One variant against the family's base variant, where both follow a data law L(D)."""

    family: str
    base: str
    other: str
    D: np.ndarray  # data sizes both variants were measured at
    ratio: np.ndarray  # observed loss(other) / loss(base) at D
    base_fit: Fit
    other_fit: Fit
    note: str  # the effective-data multiplier, in a few words


@dataclass(frozen=True)
class Run:
    """One run's training curve and held-out evaluations, in nats per token."""

    variant: str
    D: int
    tokens: np.ndarray
    loss: np.ndarray
    eval_tokens: np.ndarray
    eval_loss: np.ndarray


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """One colour per variant, the same in every figure."""
    palette = matplotlib.colormaps["tab10"].colors
    return {v: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, v in enumerate(variants)}


def _grid(n: int) -> tuple[int, int]:
    columns = min(MAX_COLUMNS, n)
    return math.ceil(n / columns), columns


def _figure(n_panels: int, title: str, *, sharey: bool = False, extra_height: float = 0.0) -> tuple[Figure, list]:
    rows, columns = _grid(n_panels)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(MIN_WIDTH, PANEL_SIZE[0] * columns), PANEL_SIZE[1] * rows + 0.5 + extra_height),
                     layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, columns, sharey=sharey, squeeze=False).ravel()
        fig.suptitle(title, fontweight="bold")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _tokens_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: format_tokens(v)))


def _loss_axis(axis) -> None:
    """A log axis labelled at evenly spaced plain numbers: losses rarely span a decade, where a log locator would
    label one or two ticks."""
    axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _style(ax, x_label: str, y_label: str) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(loc="best", frameon=False)


def scaling(panels: dict[str, list[Series]], colors: dict[str, str], *, title: str, y_label: str) -> Figure:
    """Loss against D on log–log axes, a panel per family: observed points, the fitted law (solid where measured,
    dashed beyond), its bootstrap band, and the backtest's held-out points with what the law predicted there.
    Series without a fit are joined by straight segments. Each later variant's marks are drawn smaller, on top, so
    that variants with equal losses (the same first tokens) show as rings around dots rather than hide each other."""
    fig, axes = _figure(len(panels), title, sharey=True, extra_height=0.3)
    rank = {v: i for i, v in enumerate(colors)}
    with matplotlib.rc_context(STYLE):
        for ax, (family, series) in zip(axes, panels.items(), strict=True):
            for s in sorted(series, key=lambda s: rank[s.variant]):
                _draw_series(ax, s, colors[s.variant], max(8.0, 30.0 - 12.0 * rank[s.variant]))
            ax.set_xscale("log")
            ax.set_yscale("log")
            _tokens_axis(ax.xaxis)
            _loss_axis(ax.yaxis)
            ax.set_title(family)
            ax.set_xlabel("D: tokens trained on (log scale)")
            if any(s.label != s.variant for s in series):
                ax.legend(loc="best", frameon=False)
        axes[0].set_ylabel(y_label)
        handles = _keys([s for series in panels.values() for s in series], colors)
        per_row = max(1, int(fig.get_figwidth() / LEGEND_ENTRY_WIDTH))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False)
    return fig


def _draw_series(ax, s: Series, color: str, size: float) -> None:
    held = s.held_out if s.held_out is not None else np.zeros(len(s.D), bool)
    if s.fit is None:
        order = np.argsort(s.D)
        ax.plot(s.D[order], s.loss[order], color=color, lw=1.0, alpha=0.7, marker=s.marker, ms=math.sqrt(size),
                label=s.label)
        return
    ax.scatter(s.D[~held], s.loss[~held], color=color, marker=s.marker, s=size, zorder=3, label=s.label)
    if held.any():
        ax.scatter(s.D[held], s.loss[held], facecolors="white", edgecolors=color, marker=s.marker, s=size,
                   linewidths=1.2, zorder=3)
        ax.scatter(s.D[held], s.predicted[held], color=color, marker="x", s=size, linewidths=1.2, zorder=4)
        ax.vlines(s.D[held], s.loss[held], s.predicted[held], colors=color, linewidths=0.7, linestyles=":")
    low_d, high_d = float(s.D.min()), float(s.D.max())
    measured = np.geomspace(low_d, high_d, CURVE_POINTS)
    beyond = np.geomspace(high_d, high_d * EXTRAPOLATE, CURVE_POINTS // 4)
    for grid, style in ((measured, "-"), (beyond, "--")):
        ax.plot(grid, s.fit.predict(s.law_inputs(grid)), color=color, lw=1.4, ls=style)
    if len(s.fit.samples):
        grid = np.concatenate([measured, beyond[1:]])
        low, high = s.fit.predict_interval(s.law_inputs(grid))
        ax.fill_between(grid, low, high, color=color, alpha=0.15, lw=0)


def _keys(series: list[Series], colors: dict[str, str]) -> list:
    """Legend entries shared by every panel: a colour per variant, then one per kind of mark."""
    present = {s.variant for s in series}
    handles = [Line2D([], [], ls="", marker="o", color=color, label=variant) for variant, color in colors.items()
               if variant in present]
    fits = [s.fit for s in series if s.fit is not None]
    if fits:
        handles += [Line2D([], [], color="0.3", lw=1.4, label="fitted law"),
                    Line2D([], [], color="0.3", lw=1.4, ls="--", label="law, extrapolated"),
                    Patch(color="0.3", alpha=0.2, lw=0, label=f"{fits[0].level:.0%} bootstrap band")]
    if any(s.held_out is not None and s.held_out.any() for s in series):
        handles += [Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", label="backtest: held out"),
                    Line2D([], [], ls="", marker="x", color="0.3", label="backtest: predicted")]
    return handles


def variants(comparisons: list[Comparison], repeated: dict[str, list[Series]], colors: dict[str, str], *,
             y_label: str) -> Figure:
    """A panel per comparison of variants — the other variant's loss relative to the base's, observed and fitted,
    with its bootstrap band — and a panel per family with repeated data: loss against epochs, a line per U."""
    title = {(True, False): "Data variants", (False, True): "Repeated data",
             (True, True): "Data variants and repeated data"}[bool(comparisons), bool(repeated)]
    fig, axes = _figure(len(comparisons) + len(repeated), title)
    with matplotlib.rc_context(STYLE):
        for ax, c in zip(axes, comparisons, strict=False):
            _draw_comparison(ax, c, colors[c.other])
        for ax, (family, series) in zip(axes[len(comparisons):], repeated.items(), strict=True):
            for s in series:
                _draw_repeats(ax, s, colors[s.variant])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            _loss_axis(ax.yaxis)
            ax.set_title(f"{family}: repeating U unique tokens")
            _style(ax, "epochs D / U (log scale)", y_label)
    return fig


def _draw_comparison(ax, c: Comparison, color: str) -> None:
    percent = 100 * (c.ratio - 1)
    ax.axhline(0, color="0.4", lw=0.8, label=f"{c.base} (base)")
    ax.scatter(c.D, percent, color=color, s=18, zorder=3, label=f"{c.other}: observed")
    grid = np.geomspace(float(c.D.min()), float(c.D.max()) * EXTRAPOLATE, CURVE_POINTS)
    fitted = c.other_fit.predict({"D": grid}) / c.base_fit.predict({"D": grid})
    ax.plot(grid, 100 * (fitted - 1), color=color, lw=1.4, label=f"{c.other}: fitted laws")
    if len(c.base_fit.samples) and len(c.other_fit.samples):
        draws = min(len(c.base_fit.samples), len(c.other_fit.samples))
        ratios = (c.other_fit.law.predict(c.other_fit.samples[:draws], {"D": grid})
                  / c.base_fit.law.predict(c.base_fit.samples[:draws], {"D": grid}))
        tail = (1 - c.base_fit.level) / 2
        low, high = np.quantile(ratios, [tail, 1 - tail], axis=0)
        ax.fill_between(grid, 100 * (low - 1), 100 * (high - 1), color=color, alpha=0.15, lw=0,
                        label=f"{c.base_fit.level:.0%} bootstrap band")
    ax.set_xscale("log")
    _tokens_axis(ax.xaxis)
    ax.set_title(f"{c.family}: {c.other} against {c.base}\n{c.note}", fontsize=STYLE["legend.fontsize"] + 1)
    _style(ax, "D: tokens trained on (log scale)", f"loss relative to {c.base} (%)")


def _draw_repeats(ax, s: Series, color: str) -> None:
    """The repeated runs of one U and the law along them; dotted, the law for as many tokens all unique, so that the
    gap between the two is what repetition costs."""
    epochs = s.D / s.fixed["U"]
    ax.scatter(epochs, s.loss, color=color, marker=s.marker, s=18, zorder=3, label=s.label)
    if s.fit is not None:
        grid = np.geomspace(1.0, float(epochs.max()) * 1.5, CURVE_POINTS)
        D = grid * s.fixed["U"]
        ax.plot(grid, s.fit.predict(s.law_inputs(D)), color=color, lw=1.2, label=f"{s.label}: fitted law")
        fresh = {**s.law_inputs(D), "U": D}
        ax.plot(grid, s.fit.predict(fresh), color=color, lw=1.0, ls=":", label=f"{s.label}: law if all unique")


def learning_curves(panels: dict[str, list[Run]]) -> Figure:
    """Training loss against tokens seen, a panel per family, coloured by D; held-out evaluations as dots."""
    fig, axes = _figure(len(panels), "Learning curves")
    all_d = [run.D for runs in panels.values() for run in runs]
    norm = LogNorm(min(all_d), max(max(all_d), min(all_d) * 1.01))
    cmap = matplotlib.colormaps["viridis"]
    variants_seen = list(dict.fromkeys(run.variant for runs in panels.values() for run in runs))
    dashes = {v: ("-", "--", ":", "-.")[i % 4] for i, v in enumerate(variants_seen)}
    with matplotlib.rc_context(STYLE):
        for ax, (family, runs) in zip(axes, panels.items(), strict=True):
            for run in sorted(runs, key=lambda r: r.D):
                color = cmap(norm(run.D))
                tokens, loss = _averaged(run.tokens, run.loss)
                ax.plot(tokens, loss, color=color, lw=1.0, ls=dashes[run.variant], alpha=0.9)
                ax.scatter(run.eval_tokens, run.eval_loss, color=color, s=14, edgecolors="black", linewidths=0.4,
                           zorder=3)
            ax.set_xscale("log")
            _tokens_axis(ax.xaxis)
            ax.set_title(family)
            handles = [Line2D([], [], color="0.3", ls=dashes[v], label=f"training loss ({v})") for v in variants_seen
                       if any(r.variant == v for r in runs)]
            handles.append(Line2D([], [], ls="", marker="o", color="0.5", mec="black", mew=0.4,
                                  label="held-out evaluation"))
            ax.legend(handles=handles, loc="best", frameon=False)
            ax.set_xlabel("tokens seen (log scale)")
            ax.set_ylabel("loss (nats per token)")
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, pad=0.01)
        bar.set_label("D: tokens trained on")
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_tokens(v)))
    return fig


def _averaged(tokens: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_TRAIN_POINTS points, each the mean of consecutive steps: step losses are noisy, and a long run
    would otherwise put every step into the page."""
    chunk = max(1, math.ceil(len(loss) / MAX_TRAIN_POINTS))
    if chunk == 1:
        return tokens, loss
    edges = np.arange(0, len(loss), chunk)
    counts = np.diff(np.append(edges, len(loss)))
    return tokens[np.minimum(edges + counts - 1, len(tokens) - 1)], np.add.reduceat(loss, edges) / counts


def svg(fig: Figure, element_id: str) -> str:
    """The figure as an inline <svg> element with its id and the class `report-figure`, without the XML prologue
    and RDF metadata a standalone file carries. Every id inside it (glyphs, markers, clip paths, groups), and every
    reference to one, is prefixed with `element_id`: figures on one page would otherwise repeat ids such as
    `axes_1`."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], count=1, flags=re.S)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{element_id}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{element_id}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{element_id}-\1)", text)
    return re.sub(r"^<svg\b", f'<svg id="{element_id}" class="report-figure" role="img"', text, count=1)


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buffer.getvalue()
