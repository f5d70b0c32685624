"""The report page: one HTML file with inline CSS and inline SVG figures, readable from disk with no network.

Numbers are printed from results.json's values in fixed formats: law parameters and fit quality to 4 significant
figures (`number`), losses and bits per byte to 4 decimals (`decimals`), token counts in full with separators.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from html import escape
from typing import Any

from scalelab.data.summary import METRIC_COLUMNS

SECTIONS = (("headline", "Headline findings"), ("scaling", "Loss against data"),
            ("variants", "Data variants and repetition"), ("learning-curves", "Learning curves"),
            ("fits", "Fitted laws"), ("runs", "Runs"), ("data", "Data"), ("environment", "Environment"))
LAWS = {"data": "L(D) = E + B / D<sup>β</sup>", "model": "L(N) = E + A / N<sup>α</sup>",
        "chinchilla": "L(N, D) = E + A / N<sup>α</sup> + B / D<sup>β</sup>",
        "data_constrained_D": "L(D, U) = E + B / D′<sup>β</sup>",
        "data_constrained": "L(N, D, U) = E + A / N′<sup>α</sup> + B / D′<sup>β</sup>"}
PARAMETER_NAMES = {"alpha": "α", "beta": "β", "R_D": "R<sub>D</sub>", "R_N": "R<sub>N</sub>"}
UNIT_TEXT = {"bits_per_byte": "bits per byte", "nats": "nats per token"}
MISSING = "–"

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --rule: #dfe3ea; --accent: #1f5fbf; --soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 2rem 1.5rem 4rem; }
header h1 { font-size: 1.9rem; margin: 0 0 .25rem; letter-spacing: -.01em; }
header p { margin: .2rem 0; color: var(--muted); }
nav { margin: 1rem 0 1.5rem; padding: .5rem 0; border-top: 1px solid var(--rule);
      border-bottom: 1px solid var(--rule); font-size: .9rem; }
nav a { color: var(--accent); text-decoration: none; margin-right: 1.2rem; white-space: nowrap; }
section { margin: 2.5rem 0; }
h2 { font-size: 1.35rem; margin: 0 0 .75rem; padding-bottom: .3rem; border-bottom: 2px solid var(--ink); }
h3 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
p.note { color: var(--muted); max-width: 60rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: .9rem; }
.card { background: var(--soft); border-left: 4px solid var(--accent); padding: .7rem 1rem; }
.card:first-child { grid-column: 1 / -1; }
.card h3 { margin: 0 0 .3rem; font-size: 1rem; }
.card ul { margin: 0; padding-left: 1.1rem; }
.card li { margin: .25rem 0; }
figure { margin: 1rem 0 2rem; }
figure .report-figure { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .4rem; max-width: 60rem; }
figcaption a { color: var(--accent); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .86rem; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { padding: .3rem .5rem; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; white-space: nowrap; }
.nowrap { white-space: nowrap; }
tr.failed td { color: #a4262c; }
footer { color: var(--muted); font-size: .85rem; border-top: 1px solid var(--rule); padding-top: .8rem; }
"""


@dataclass(frozen=True)
class Plot:
    """A drawn figure: where it goes on the page, its inline SVG, and its PNG file."""

    section: str
    id: str
    title: str
    svg: str
    png: str  # file name in the report directory
    png_bytes: bytes = field(repr=False)


def number(x: float | None) -> str:
    return MISSING if x is None else f"{x:.4g}"


def decimals(x: float | None) -> str:
    return MISSING if x is None else f"{x:.4f}"


def count(x: float | None) -> str:
    return MISSING if x is None else f"{int(x):,}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _sentence(text: str) -> str:
    text = text.strip()
    return escape(text[:1].upper() + text[1:] + ("" if text.endswith(".") else "."))


def _table(head: list[str], rows: list[list[str]], *, numeric: Container[int] = (), caption: str = "",
           row_classes: list[str] | None = None) -> str:
    """A table from cells that are already HTML; columns in `numeric` are right-aligned."""
    def cells(values: list[str], tag: str) -> str:
        return "".join(f'<{tag}{" class=n" if i in numeric else ""}>{v}</{tag}>' for i, v in enumerate(values))

    body = "".join(f'<tr{f" class={row_classes[i]}" if row_classes and row_classes[i] else ""}>{cells(r, "td")}</tr>'
                   for i, r in enumerate(rows))
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table>{title}<thead><tr>{cells(head, "th")}</tr></thead><tbody>{body}</tbody>' \
           f"</table></div>"


def _figure(plot: Plot, caption: str) -> str:
    return (f'<figure aria-label="{escape(plot.title)}">{plot.svg}<figcaption>{caption} '
            f'<a href="{escape(plot.png)}">PNG</a></figcaption></figure>')


def page(results: dict[str, Any], plots: list[Plot]) -> str:
    analysis = results["analysis"]
    by_section: dict[str, list[Plot]] = {}
    for plot in plots:
        by_section.setdefault(plot.section, []).append(plot)
    body = [_header(results), _nav(), _headline(analysis), _scaling(analysis, by_section.get("scaling", [])),
            _variants(analysis, by_section.get("variants", [])), _learning(by_section.get("learning-curves", [])),
            _fits(analysis), _runs(results["runs"]), _data(results["data"]), _environment(results["environment"])]
    footer = (f"<footer>Made by scalelab {escape(str(results['environment']['packages']['scalelab']))} on "
              f"{escape(results['environment']['generated_at'])}. Everything on this page is in "
              f'<a href="results.json">results.json</a>.</footer>')
    return ("<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
            '<meta name=viewport content="width=device-width, initial-scale=1">\n'
            f"<title>Study report: {escape(results['study'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + f"\n{footer}\n</main>\n</body>\n</html>\n")


def _section(key: str, content: str) -> str:
    return f'<section id="{key}">\n<h2>{dict(SECTIONS)[key]}</h2>\n{content}\n</section>'


def _header(results: dict[str, Any]) -> str:
    runs, analysis = results["runs"], results["analysis"]
    done = [r for r in runs if r["status"] == "done"]
    families = list(dict.fromkeys(r["family"] for r in runs))
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    sizes = [r["D"] for r in done]
    resamples = max((g["fit"]["n_bootstrap"] for g in analysis["groups"] if "fit" in g), default=0)
    facts = [f"{len(done)} of {len(runs)} runs done", f"families: {', '.join(families)}",
             f"data variants: {', '.join(variants)}"]
    if sizes:
        facts.append(f"D from {count(min(sizes))} to {count(max(sizes))} tokens")
    environment = results["environment"]
    fitted = (f"Laws fitted to held-out {UNIT_TEXT[analysis['unit']]}; intervals are {analysis['level']:.0%} "
              f"bootstrap intervals over {resamples} resamples. Runs took {duration(environment['runs_wall_seconds'])}"
              f" of wall time in all. Report made {environment['generated_at']}.")
    return (f"<header>\n<h1>Study report: {escape(results['study'])}</h1>\n<p>{escape(' · '.join(facts))}</p>\n"
            f"<p>{escape(fitted)}</p>\n</header>")


def _nav() -> str:
    return "<nav>" + "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS) + "</nav>"


def _headline(analysis: dict[str, Any]) -> str:
    """The planner's sentences: those that compare groups first, then a card per (family, variant)."""
    cards = []
    for group in analysis["groups"]:
        if "findings" in group:  # only what the data support: numbers with bounded intervals, identified floors
            sentences = list(group["findings"])
        else:
            answers = group.get("answers", {}).values()
            sentences = [a["sentence"] for a in answers if isinstance(a, dict) and "sentence" in a]
        title = f"{group.get('name', group['family'])} · {group['variant']}"
        cards.append((title, sentences or [f"no fit: {group.get('error') or 'no finding the data support'}"]))
    shown = {s for _, sentences in cards for s in sentences}
    across = [s for s in analysis["sentences"] if s not in shown]
    if across:
        cards.insert(0, ("Across families and variants", across))
    content = "".join(f'<div class="card"><h3>{escape(title)}</h3><ul>'
                      + "".join(f"<li>{_sentence(s)}</li>" for s in sentences) + "</ul></div>"
                      for title, sentences in cards)
    return _section("headline", f'<div class="cards">{content}</div>')


def _scaling(analysis: dict[str, Any], plots: list[Plot]) -> str:
    level = f"{analysis['level']:.0%}"
    captions = [
        "Each point is one run's loss on the held-out split, the same bytes for every run. Lines are the law fitted "
        "to each family and data variant (see <a href=\"#fits\">Fitted laws</a>), solid over the data measured and "
        f"dashed beyond it, with its {level} bootstrap band shaded. Hollow marks are the largest data sizes, which "
        "the backtest held out: the law refitted without them predicted the crosses.",
        f"The same runs in the other unit, points joined in order of D; the laws are fitted in "
        f"{UNIT_TEXT[analysis['unit']]} only.",
    ]
    return _section("scaling", "\n".join(_figure(p, c) for p, c in zip(plots, captions, strict=False)))


def _variants(analysis: dict[str, Any], plots: list[Plot]) -> str:
    multipliers = analysis["multipliers"]
    parts = []
    if multipliers:
        parts.append("<p>The effective-data multiplier: how many tokens of the base variant one token of the other "
                     "is worth, read off the two fitted laws at the largest D measured.</p>")
        parts.append("<ul>" + "".join(f"<li><b>{escape(m['family'])}</b>: {_sentence(m['sentence'])}</li>"
                                      for m in multipliers) + "</ul>")
    for plot in plots:
        parts.append(_figure(plot, "A panel per pair of variants: the other variant's loss relative to the base "
                                   "variant's, observed at the data sizes both were trained on and from the two "
                                   "fitted laws, with the band of their bootstrap draws. A panel per family with "
                                   "repeated data: loss against epochs over U unique tokens, a line per U."))
    if not parts:
        parts.append('<p class="note">No family was trained on more than one data variant with a fitted law, and no '
                     "run repeated its data, so there is nothing to compare here.</p>")
    return _section("variants", "\n".join(parts))


def _learning(plots: list[Plot]) -> str:
    if not plots:
        return _section("learning-curves", '<p class="note">No finished run logged training steps (n-gram models '
                                           "are estimated from counts, not trained step by step).</p>")
    return _section("learning-curves", _figure(
        plots[0], "Training loss against tokens seen, one line per neural run coloured by its data size D (long "
                  "runs averaged over consecutive steps); dots are evaluations on the held-out split. Both in nats "
                  "per token."))


def _law(form: str) -> str:
    return f"<span class=nowrap>{LAWS.get(form, escape(form))}</span>"


def _fits(analysis: dict[str, Any]) -> str:
    rows = []
    for group in analysis["groups"]:
        name = [escape(group.get("name", group["family"])), escape(group["variant"])]
        if "fit" not in group:
            rows.append([*name, _law(group["form"]), count(group["points"]),
                         f"no fit: {escape(group['error'])}", MISSING, MISSING])
            continue
        fit = group["fit"]
        params = "<br>".join(_parameter(p, v, fit, group.get("floor")) for p, v in fit["params"].items())
        quality = f"RMSE of log loss {number(fit['rmse_log'])}<br>R² {number(fit['r2'])}"
        if fit.get("n_bootstrap") or fit.get("bootstrap_failed"):
            quality += f"<br>bootstrap: {escape(fit.get('resampling_text', 'points resampled'))}"
            if fit.get("bootstrap_failed"):
                quality += f"; {fit['bootstrap_failed']} refits failed and were dropped"
            if fit.get("bootstrap_rejected"):
                quality += f"; {fit['bootstrap_rejected']} degenerate resamples redrawn"
        if group.get("excluded_unreliable"):
            quality += f"<br>{group['excluded_unreliable']} unreliable run(s) left out"
        backtest = group.get("backtest")
        held = (f"fitted on the {backtest['fitted_on']} smallest, {len(backtest['held_out'])} held out<br>"
                f"mean error {backtest['mean_abs_rel_error']:.1%}, max {backtest['max_abs_rel_error']:.1%}"
                if backtest else "too few data sizes")
        if backtest and backtest.get("mean_reducible_abs_rel_error") is not None:
            held += f"<br>{backtest['mean_reducible_abs_rel_error']:.1%} of the reducible loss L − E"
        if backtest and backtest.get("coverage") is not None:
            held += f"<br>{backtest['coverage']:.0%} inside the {backtest['level']:.0%} band"
        rows.append([*name, _law(fit["form"]), count(fit["n_points"]), f"<span class=nowrap>{params}</span>", quality,
                     held])
    head = ["family", "variant", "law", "points", f"parameters ({analysis['level']:.0%} interval)", "fit quality",
            "backtest"]
    note = ('<p class="note">Fitted as in Hoffmann et al. (2022), Approach 3: Huber loss on log-loss residuals, '
            f"in {UNIT_TEXT[analysis['unit']]}. The backtest refits each law on the smaller three quarters of its "
            "data sizes and scores its predictions of the rest (absolute relative error).</p>")
    return _section("fits", note + _table(head, rows, numeric={3}))


def _parameter(name: str, value: float, fit: dict[str, Any], verdict: dict[str, Any] | None) -> str:
    """One fitted parameter with its interval; a floor E the data do not identify as a bound, never a value."""
    shown = PARAMETER_NAMES.get(name, escape(name))
    interval = fit["intervals"].get(name)
    if name == "E" and (verdict is None or not verdict.get("identified")):
        if verdict is None or interval is None:
            return f"{shown}: not identified (no interval)"
        return f"{shown} &lt; {number(verdict['bound'])}: no floor visible"
    return f"{shown} = {number(value)}" + (f" ({number(interval[0])}–{number(interval[1])})" if interval else "")


def _with_se(value: float | None, se: float | None) -> str:
    return decimals(value) if se is None or value is None else f"{decimals(value)} ± {decimals(se)}"


def _runs(runs: list[dict[str, Any]]) -> str:
    families = list(dict.fromkeys(r["family"] for r in runs))
    ordered = sorted(runs, key=lambda r: (families.index(r["family"]), r["variant"], r["size"], r["D"], r["U"],
                                          r["seed"]))
    head = ["family", "size", "variant", "D", "U", "seed", "nats/token", "bits/byte", "tokens seen", "epochs",
            "FLOPs", "N", "wall time", "status"]
    rows, classes = [], []
    for r in ordered:
        status = escape(r["status"])
        if r["error"]:
            status = f'<span title="{escape(r["error"].strip().splitlines()[-1])}">{status}</span>'
        rows.append([escape(r["family"]), escape(r["size"]), escape(r["variant"]), count(r["D"]), count(r["U"]),
                     str(r["seed"]), _with_se(r["loss"], r.get("loss_se")),
                     _with_se(r["bits_per_byte"], r.get("bits_per_byte_se")), count(r["tokens_seen"]),
                     MISSING if r["epochs"] is None else f"{r['epochs']:.3g}",
                     MISSING if r["flops"] is None else f"{r['flops']:.3g}", count(r["N"]),
                     duration(r["wall_seconds"]), status])
        if r.get("reliable") is False:
            rows[-1][-1] += " (unreliable: too few steps; left out of the fits)"
        classes.append("failed" if r["status"] == "failed" else "")
    note = ('<p class="note">Losses are on the held-out split, ± their standard error from a bootstrap over '
            "held-out documents.</p>" if any(r.get("loss_se") is not None for r in runs) else "")
    return _section("runs", note + _table(head, rows, numeric=set(range(3, 13)), row_classes=classes))


def _data(data: dict[str, Any]) -> str:
    if "error" in data:
        where = f" ({escape(data['dataset'])})" if data.get("dataset") else ""
        return _section("data", f'<p class="note">No data report: {escape(data["error"])}{where}.</p>')
    funnel, views = data["funnel"], data["views"]
    steps = [["read", count(funnel["read"]), ""]]
    steps += [[f"skipped: {escape(reason)}", f"−{count(n)}", ""] for reason, n in sorted(funnel["skipped"].items())]
    steps.append(["cleaned", count(funnel["cleaned"]), ""])
    steps.append(["split", "", ", ".join(f"{escape(name)} {count(n)}" for name, n in funnel["staged"].items())])
    steps += [[f"filter {escape(rule)}", f"−{count(info['documents'])}",
               f"{info['bytes'] / 1e6:,.2f} MB; dropped from the filtered variants only"]
              for rule, info in funnel["filtered"].items()]
    steps += [[f"removed: {escape(step)}", f"−{count(n)}", ""] for step, n in funnel["removed"].items()]
    steps += [[f"kept: {escape(name)}", count(info["documents"]),
               f"{info['bytes'] / 1e6:,.2f} MB, {count(info['tokens'])} tokens"] for name, info in views.items()]
    metrics = data["metrics"]
    rows = [[escape(title), *(escape(fmt.format(m[key])) if m.get(key) is not None else MISSING
                              for m in metrics.values())] for key, title, fmt in METRIC_COLUMNS]
    content = [
        f'<p class="note">Dataset <code>{escape(data["dataset"])}</code> (fingerprint '
        f"<code>{escape(data['fingerprint'])}</code>). {escape(data['minhash'])}.</p>",
        _table(["step", "documents", "detail"], steps, numeric={1}, caption="The funnel: documents at each step"),
        _table(["metric", *map(escape, metrics)], rows, numeric=set(range(1, len(metrics) + 1)),
               caption=f"Diversity and quality per view, on each view's first {count(data['max_tokens'])} tokens"),
    ]
    return _section("data", "\n".join(content))


def _environment(env: dict[str, Any]) -> str:
    packages = [[escape(name), escape(v or "not installed")] for name, v in env["packages"].items()]
    devices = ", ".join(f"{escape(device)}: {n} run{'s' if n > 1 else ''}" for device, n in env["run_devices"].items())
    rows = [["Python", escape(env["python"])], *packages, ["platform", escape(env["platform"])],
            ["CPU", f"{escape(env['cpu'])} ({env['cpu_count']} cores)"],
            ["GPU", escape(", ".join(env["gpu"]) or "none")],
            ["runs ran on (device × processes)", devices or MISSING],
            ["wall time of the runs, summed", duration(env["runs_wall_seconds"])],
            ["study elapsed, first start to last finish", duration(env["study_elapsed_seconds"])],
            ["report made", escape(env["generated_at"])]]
    return _section("environment", '<p class="note">The CPU, GPU and packages are those of the machine that made '
                                   "this report.</p>" + _table(["what", "value"], rows))
