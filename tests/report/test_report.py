import json
import math
import os
import re
import socket

import numpy as np
import pytest

from scalelab.errors import OutputError
from scalelab.report import build_report, write_report
from scalelab.report.html import SECTIONS
from scalelab.study.results import ResultsStore, RunRecord

BYTES_PER_TOKEN = 3.5
FRESH = [2_000 * 2**k for k in range(8)]
REPEATS = {"U": 8_000, "D": [16_000, 32_000, 64_000]}


SIZES = {"3": 1e5, "4": 1e6, "5": 1e7}


def bits_per_byte(D: float, U: float, B: float, N: float, *, E: float = 1.0, beta: float = 0.25,
                  R_D: float = 3.0) -> float:
    """The data-constrained law (Muennighoff et al. 2023) plus a model-size term, which is L(D) = E + B / D^beta
    (and a constant) when U >= D and N is fixed."""
    unique = min(U, D)
    effective = unique + unique * R_D * (1 - math.exp(-(D / unique - 1) / R_D))
    return E + 4 * N**-0.3 + B * effective**-beta


def planned(data_path):
    """(row, N, bits per byte) for every made-up run: a Transformer on two variants (the data law), an LSTM that
    repeats data (the data-constrained law), and an n-gram of three sizes (Chinchilla's law; as if its orders had
    parameter counts)."""
    runs = []
    for variant, B in (("raw", 12.0), ("filtered", 9.0)):
        runs += [("transformer", "1M", variant, D, D, B) for D in FRESH]
    runs += [("lstm", "1M", "raw", D, D, 12.0) for D in FRESH]
    runs += [("lstm", "1M", "raw", D, REPEATS["U"], 12.0) for D in REPEATS["D"]]
    runs += [("ngram", size, "raw", D, D, 12.0) for size in SIZES for D in FRESH[::2]]
    rng = np.random.default_rng(0)
    for family, size, variant, D, U, B in runs:
        N = SIZES.get(size, 1e6)
        row = RunRecord(id=f"{family}-{size}-{variant}-{D}-{U}", config={"data": data_path, "family": family},
                        family=family, size=size, variant=variant, D=D, U=U, seed=0, estimated_seconds=1.0)
        yield row, N, bits_per_byte(D, U, B, N) * math.exp(rng.normal(0, 0.002))


def make_study(root, data_path):
    study = root / "study"
    with ResultsStore(study / "results.sqlite") as store:
        rows = list(planned(data_path))
        store.sync_plan([row for row, _, _ in rows] + [RunRecord(
            id="broken", config={"data": data_path}, family="transformer", size="1M", variant="raw", D=999, U=999,
            seed=0, estimated_seconds=1.0)])
        for row, N, bpb in rows:
            nll = bpb * math.log(2) * BYTES_PER_TOKEN
            store.claim(row.id, os.getpid(), socket.gethostname())
            store.finish(row.id, {
                "eval": {"nll": nll, "perplexity": math.exp(nll), "bits_per_byte": bpb, "tokens": 1000, "bytes": 3500,
                         "split": "validation"},
                "N": int(N), "params": int(N * 1.2), "tokens_seen": row.D, "epochs": row.D / row.U,
                "flops": 6e6 * row.D, "wall_seconds": 1.0 + row.D / 1e4, "device": "cpu", "world_size": 1})
            if row.family == "transformer" and row.D <= 4_000:
                write_metrics(study / "runs" / row.id, row.D)
        store.claim("broken", os.getpid(), socket.gethostname())
        store.fail("broken", "Traceback ...\nRuntimeError: loss is NaN at step 3")
    return study


def write_metrics(run_dir, D: int) -> None:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, D // 256 + 1):
        lines.append({"step": step, "tokens": 256 * step, "loss": 9.0 - 0.2 * step})
        if step % 4 == 0:
            lines.append({"step": step, "tokens": 256 * step,
                          "eval": {"nll": 9.1 - 0.2 * step, "bits_per_byte": 3.7 - 0.08 * step}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def report(prepared, tmp_path_factory):
    study = make_study(tmp_path_factory.mktemp("report"), str(prepared.path))
    index = write_report(study, bootstrap=20)
    return index, index.read_text(encoding="utf-8"), json.loads(index.with_name("results.json").read_text())


def test_every_section_and_figure_is_on_the_page(report):
    index, page, _ = report
    assert index.parent.name == "report" and index.name == "index.html"
    for key, title in SECTIONS:
        assert f'<section id="{key}">' in page and f"<h2>{title}</h2>" in page
    for figure in ("fig-scaling", "fig-scaling-nats", "fig-variants", "fig-learning-curves"):
        assert re.search(rf'<svg id="{figure}" class="report-figure"', page), figure
    assert "to reach" in page.lower() and "is worth about" in page  # the planner's sentences
    assert "The funnel: documents at each step" in page and "Diversity and quality per view" in page


def test_the_page_needs_no_network(report):
    index, page, _ = report
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert links
    for link in links:
        if link.startswith("data:"):  # an image inline in an SVG (the colour bar)
            continue
        assert not re.match(r"(?i)([a-z][a-z0-9+.-]*:|//)", link), link  # no scheme, no network path
        assert link.startswith("#") or (index.parent / link).is_file(), link
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # only clip paths inside the SVGs
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several figures on one page, each with its own marker and clip ids


def test_numbers_on_the_page_are_those_of_results_json(report):
    _, page, results = report
    groups = {(g["family"], g["variant"]): g for g in results["analysis"]["groups"]}
    assert {key: g["form"] for key, g in groups.items()} == {
        ("transformer", "raw"): "data", ("transformer", "filtered"): "data", ("lstm", "raw"): "data_constrained_D",
        ("ngram", "raw"): "chinchilla"}
    for group in groups.values():
        beta = group["fit"]["params"]["beta"]
        low, high = group["fit"]["intervals"]["beta"]
        assert f"β = {beta:.4g} ({low:.4g}–{high:.4g})" in page
    assert groups["transformer", "raw"]["fit"]["params"]["beta"] == pytest.approx(0.25, rel=0.2)
    run = next(r for r in results["runs"] if r["id"] == "transformer-1M-raw-64000-64000")
    assert f"<td class=n>{run['bits_per_byte']:.4f}</td>" in page and f"<td class=n>{run['D']:,}</td>" in page
    failed = next(r for r in results["runs"] if r["id"] == "broken")
    assert failed["status"] == "failed" and failed["bits_per_byte"] is None
    assert "RuntimeError: loss is NaN at step 3" in page
    assert results["data"]["funnel"]["read"] > 0 and f"{results['data']['funnel']['read']:,}" in page
    assert results["environment"]["packages"]["numpy"] == np.__version__
    assert results["environment"]["runs_wall_seconds"] == pytest.approx(sum(r["wall_seconds"] or 0 for r in
                                                                            results["runs"]))


def test_results_json_is_strict_json(report):
    index, _, _ = report

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    json.loads(index.with_name("results.json").read_text(), parse_constant=refuse)


def test_the_figures_draw_the_fits_the_tables_state_fitted_once(report, monkeypatch, tmp_path):
    """The report fits each law once, with its bootstrap, and draws the bands from those fits; the only other
    fits are the backtests' (no bootstrap)."""
    import inspect

    from scalelab.laws import fit as fitting
    from scalelab.report import plots

    original, bootstraps = fitting._fit_law, []

    def counting(*args, **kwargs):
        bootstraps.append(inspect.signature(original).bind(*args, **kwargs).arguments["bootstrap"])
        return original(*args, **kwargs)

    drawn, scaling = [], plots.scaling

    def capture(panels, *args, **kwargs):
        drawn.extend(s for series in panels.values() for s in series if s.fit is not None)
        return scaling(panels, *args, **kwargs)

    monkeypatch.setattr(fitting, "_fit_law", counting)
    monkeypatch.setattr(plots, "scaling", capture)
    index, analysis = build_report(report[0].parents[1], tmp_path / "report", bootstrap=5)
    backtests = sum(g.backtest is not None for g in analysis.groups)
    # Bootstrapped: each group's law, its backtest (for the band's coverage), each envelope and the sizes' own L(D)
    # not fitted as groups already; the Hestness regions' refits have no bootstrap.
    groups = set(map(id, analysis.fits.values()))
    envelopes = sum(1 + sum(not isinstance(f, str) and id(f) not in groups for f in e.per_size.values())
                    for e in analysis.envelopes if e.fit is not None)
    assert len(analysis.fits) == 4 and bootstraps.count(5) == 4 + backtests + envelopes
    assert set(bootstraps) <= {0, 5}
    assert {s.fit for s in drawn} == set(analysis.fits.values())  # the same objects (a Fit compares by identity)
    stated = json.loads(index.with_name("results.json").read_text())["analysis"]["groups"]
    for group in stated:
        fit = analysis.fits[group["name"], group["variant"]]
        assert fit.params == group["fit"]["params"]
        assert {name: list(bounds) for name, bounds in fit.intervals.items()} == group["fit"]["intervals"]


def test_figures_are_written_as_png(report):
    index, page, _ = report
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == ["learning-curves.png", "scaling-nats.png", "scaling.png", "variants.png"]
    for name in pngs:
        data = (index.parent / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        assert f'href="{name}"' in page


def test_a_failing_figure_leaves_the_previous_report(report, monkeypatch, tmp_path):
    index, _, _ = report
    study = index.parents[1]
    out = tmp_path / "out" / "report"

    def broken(*args, **kwargs):
        raise RuntimeError("no figure today")

    with monkeypatch.context() as patch:
        patch.setattr("scalelab.report.plots.learning_curves", broken)
        with pytest.raises(RuntimeError, match="no figure today"):
            write_report(study, out, bootstrap=5)
    assert not out.exists() and not list(out.parent.iterdir())  # nothing half-written, no staging left
    previous = write_report(study, out, bootstrap=5).read_text()
    monkeypatch.setattr("scalelab.report.plots.learning_curves", broken)
    with pytest.raises(RuntimeError, match="no figure today"):
        write_report(study, out, bootstrap=5)
    assert [p.name for p in out.parent.iterdir()] == ["report"]
    assert (out / "index.html").read_text() == previous


def test_a_report_replaces_only_an_earlier_report(report, tmp_path):
    index, _, _ = report
    study = index.parents[1]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a report")
    with pytest.raises(OutputError, match="not a scalelab report"):
        write_report(study, mine, bootstrap=5)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "report"
    write_report(study, out, bootstrap=5)
    (out / "index.html").write_text("stale")
    write_report(study, out, bootstrap=5)  # an earlier report is remade without --force
    assert "<html" in (out / "index.html").read_text()
    (out / "notes.txt").write_text("added by hand")
    with pytest.raises(OutputError, match="notes.txt"):
        write_report(study, out, bootstrap=5)
    assert (out / "notes.txt").read_text() == "added by hand"
    assert oct(out.stat().st_mode & 0o777) == "0o755"
