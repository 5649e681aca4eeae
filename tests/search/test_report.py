"""`h2s-search report` on real SQLite studies: the page's figures and table, the V1-V3 reference rows,
the LaTeX and PDF/PNG exports, the command line, and the page rendered in a real headless Chromium."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.diagnosis import diagnose
from search.report import build_figures, latex_table, load_report_data, write_report
from search.spec import load_spec

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

V4 = {"d_model": 256, "nhead": 4, "encoder_layers": 2, "decoder_layers": 2, "dim_feedforward": 1024,
      "dropout": 0.3, "batch_size": 64, "lr": 1e-4}


def distributions(spec) -> dict:
    out = {}
    for p in spec.space:
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def curves(rng: random.Random, epochs: int, final: float, overfit_at: int | None):
    """(train, val) losses per epoch: val falls towards `final`, then rises after overfit_at."""
    train, val = [], []
    for e in range(1, epochs + 1):
        base = final + 1.5 * math.exp(-0.5 * e)
        v = base + (0.06 * (e - overfit_at) if overfit_at and e > overfit_at else 0.0)
        train.append(base + 0.1 - 0.08 * e + rng.uniform(-0.01, 0.01))
        val.append(v + rng.uniform(-0.005, 0.005))
    return train, val


def build_study(tmp_path: Path, *, multi: bool = False, n_complete: int = 8, n_pruned: int = 3,
                name: str = "capacity") -> tuple[str, optuna.Study]:
    """A capacity-like study in a real SQLite file, with the worker's user attributes on every trial."""
    spec = load_spec("capacity")
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    kw = {"directions": ["minimize", "minimize"]} if multi else {"direction": "minimize"}
    study = optuna.create_study(study_name=name, storage=url, **kw)
    study.set_metric_names(["val_loss", "params"] if multi else ["val_loss"])
    study.set_user_attr("spec", spec.raw)
    study.set_user_attr("fingerprint", "ab" * 32)
    study.set_user_attr("n_trials", n_complete + n_pruned + 2)
    study.set_user_attr("data", "synthetic corpus for the test")
    dists = distributions(spec)
    rng = random.Random(0)
    # trial 0: the anchor; then n_complete complete, n_pruned pruned and one failed trial
    for k in range(n_complete + n_pruned + 2):
        anchor = k == 0
        params = dict(V4) if anchor else {n: _sample(d, rng) for n, d in dists.items()}
        if not anchor and params["d_model"] % params["nhead"]:
            params["nhead"] = 4
        state = TrialState.COMPLETE if k <= n_complete else TrialState.PRUNED
        if k == n_complete + n_pruned + 1:
            state = TrialState.FAIL
        epochs = 8 if state == TrialState.COMPLETE else 2
        final = 3.07 if anchor else rng.uniform(1.4, 3.9)
        train, val = curves(rng, epochs, final, overfit_at=5 if k % 3 == 1 else None)
        hist = [{"epoch": e + 1, "train_loss": t, "val_loss": v, "lr": 1e-4}
                for e, (t, v) in enumerate(zip(train, val, strict=True))]
        n_params = 3_770_000 if anchor else int(params["d_model"] ** 2 * 40 * (params["encoder_layers"] + 2))
        best = min(range(epochs), key=lambda i: val[i])
        attrs = {"anchor": anchor, "params": n_params, "epochs_run": epochs, "best_epoch": best + 1,
                 "train_loss": train[best], "val_loss": val[best], "gap": val[best] - train[best],
                 **diagnose(hist).attrs(pruned=state == TrialState.PRUNED)}
        if anchor:
            attrs["anchor_name"] = "v4"
        if state == TrialState.COMPLETE:
            attrs.update(bleu=rng.uniform(0, 5), chrf=rng.uniform(10, 30), verdict=rng.choice(["none", "minimum"]))
        if state == TrialState.FAIL:
            attrs = {"anchor": False, "fail_reason": "out of memory: CUDA out of memory"}
        values = None
        if state == TrialState.COMPLETE:
            values = [val[best], float(n_params)] if multi else [val[best]]
        study.add_trial(create_trial(
            state=state, params=params, distributions=dists, values=values, user_attrs=attrs,
            intermediate_values={} if state == TrialState.FAIL else dict(enumerate(val, start=1))))
    return url, study


def _sample(d, rng: random.Random):
    if isinstance(d, CategoricalDistribution):
        return rng.choice(d.choices)
    if isinstance(d, IntDistribution):
        return rng.randint(d.low, d.high)
    if d.log:
        return math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
    return rng.uniform(d.low, d.high)


def text_of(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))


@pytest.fixture(scope="module")
def capacity(tmp_path_factory):
    """One capacity-like study for the module's tests; they only read it."""
    return build_study(tmp_path_factory.mktemp("capacity"))


def test_the_page_has_every_figure_the_table_and_the_notes_rows(capacity, tmp_path):
    _, study = capacity
    res = write_report(study, tmp_path / "report.html", storage_desc="sqlite:///capacity.db")
    page = res.path.read_text()
    assert res.figures == ["history", "importances", "parallel", "intermediate", "params"] and not res.missing
    for name in res.figures:
        assert f'id="fig-{name}"' in page
    # Self-contained: plotly.js inlined, nothing loaded from elsewhere.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page) and len(page) > 3_000_000
    assert "Plotly.newPlot" in page.split("</head>", 1)[1]
    text = text_of(page)
    # The table: anchor first, then the best, with measured parameter counts and the anchor's values.
    anchor = next(t for t in study.trials if t.user_attrs["anchor"])
    best = study.best_trial
    rows = re.findall(r'<tr class="([^"]*)">(.*?)</tr>', page)
    assert rows[0][0].startswith("anchor") and ">anchor v4" in rows[0][1]
    assert f"{anchor.value:.4f}" in rows[0][1] and "3.77M" in rows[0][1]
    best_row = next(r for c, r in rows if "best" in c)
    assert f">{best.number}<" in best_row and f"{best.value:.4f}" in best_row
    assert f"{best.user_attrs['bleu']:.2f}" in best_row and best.user_attrs["verdict"] in best_row
    trial_rows = [r for c, r in rows if not c.startswith("notes")]
    assert len(trial_rows) == 6 or (len(trial_rows) == 5 and anchor.number in [t.number for t in _top5(study)])
    # The researcher's V1-V3, marked as not from this study.
    notes = [r for c, r in rows if c == "notes"]
    assert len(notes) == 3
    assert "V1 (notes)" in notes[0] and "4.12" in notes[0] and "10.80M" in notes[0]
    assert "The researcher's V1–V3 runs, from the notes, not from this study" in text
    assert "0.8 (notes: 0.008)" in notes[0]
    assert "LR collapsed to 1e-8 by epoch 7" in notes[1] and "N/A" in notes[1] and "7.50M" in notes[1]
    assert "0.81" in notes[2] and "4.77" in notes[2]
    # Diagnosis in words, per trial, including the failed one.
    overfit = next(t for t in study.trials if t.user_attrs.get("overfit_epoch"))
    assert (f"trial {overfit.number}: overfitting from epoch {overfit.user_attrs['overfit_epoch']}, "
            f"gap {overfit.user_attrs['final_gap']:.2f}") in text
    assert "failed: out of memory" in text and "pruned after epoch 2" in text
    assert "best vs anchor: val_loss" in text  # the summary compares the best with the anchor


def _top5(study):
    return sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)[:5]


def test_figures_mark_the_anchor_and_show_pruned_trials(capacity):
    _, study = capacity
    figs = build_figures(load_report_data(study))
    hist, _ = figs["history"]
    names = [t.name for t in hist.data]
    assert "anchor v4" in names and "pruned (best reported)" in names
    star = hist.data[names.index("anchor v4")]
    assert list(star.x) == [0] and star.marker.symbol == "star" and list(star.text) == ["anchor V4"]
    inter, note = figs["intermediate"]
    pruned = [t for t in inter.data if t.line.dash == "dot"]
    assert len(pruned) == 3 and "3 pruned" in note
    anchor_curve = [t for t in inter.data if t.name == "anchor v4"]
    assert len(anchor_curve) == 1 and anchor_curve[0].line.width == 4
    imp, _ = figs["importances"]
    assert set(imp.data[0].y) <= set(V4) and sum(imp.data[0].x) == pytest.approx(1.0)
    par, _ = figs["parallel"]
    assert [d.label for d in par.data[0].dimensions][-1] == "val_loss"
    assert "lr (log)" in [d.label for d in par.data[0].dimensions]
    params, _ = figs["params"]
    assert params.layout.xaxis.type == "log" and "anchor v4" in [t.name for t in params.data]


def test_too_few_trials_give_a_message_instead_of_importances(tmp_path):
    _, study = build_study(tmp_path, n_complete=1, n_pruned=0, name="small")
    res = write_report(study, tmp_path / "small.html")
    page = res.path.read_text()
    assert "importances" in res.missing and "importances" not in res.figures
    assert 'id="missing-importances"' in page and "need at least 3 completed trials; this study has 2" in page
    assert 'id="fig-history"' in page  # everything else still renders


def test_a_multi_objective_study_draws_its_pareto_front(tmp_path):
    _, study = build_study(tmp_path, multi=True, name="pareto")
    d = load_report_data(study)
    assert d.multi and sorted(d.pareto) == sorted(t.number for t in study.best_trials)
    fig, note = build_figures(d)["params"]
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert len(front.x) == len(study.best_trials) and list(front.x) == sorted(front.x)
    assert "Pareto front" in note
    page = write_report(study, tmp_path / "p.html").path.read_text()
    assert "Pareto front" in page


def test_latex_table(capacity, tmp_path):
    _, study = capacity
    res = write_report(study, tmp_path / "table.tex", fmt="latex")
    tex = res.path.read_text()
    assert tex == latex_table(load_report_data(study))
    assert "\\begin{tabular}{ll" in tex and tex.rstrip().endswith("\\end{tabular}")
    assert "\\toprule" in tex and "\\bottomrule" in tex and "d\\_model" in tex
    body = tex.split("\\midrule")[1]
    assert body.strip().splitlines()[0].startswith("anchor v4 & 0 & 256 & 4 & 2 & 2 & 1024 & 0.3 & 64 & 0.0001 & 3.77M")
    assert "From the notes, not from this study" in tex
    assert "V1 & -- &" in tex and "0.8 (notes: 0.008)" in tex and "\\_" not in tex.split("From the notes")[1][:20]
    n_cols = len(re.sub(r"\{[^}]*\}", "", tex.split("\\begin{tabular}")[1].splitlines()[0][1:-1]))
    for line in tex.splitlines():
        if line.endswith("\\\\") and "multicolumn" not in line:
            assert line.count(" & ") == n_cols - 1, line


def test_figures_for_a_paper_as_pdf_and_png(capacity, tmp_path):
    from PIL import Image

    _, study = capacity
    res = write_report(study, tmp_path / "r.html", figures_dir=tmp_path / "figs")
    names = {p.name for p in res.files}
    for fig in ("history", "importances", "parallel", "intermediate", "params"):
        assert {f"{fig}.pdf", f"{fig}.png"} <= names
        assert (tmp_path / "figs" / f"{fig}.pdf").read_bytes().startswith(b"%PDF")
        with Image.open(tmp_path / "figs" / f"{fig}.png") as im:
            assert im.width > 600 and len(im.convert("RGB").getcolors(1 << 20) or []) > 20


def test_report_command(capacity, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from search.cli import app

    url, _ = capacity
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--study", "capacity", "--storage", url, "--out", "out/r.html"])
    assert res.exit_code == 0, res.output
    assert "wrote report with 5 figure(s) for study 'capacity' (13 trials)" in res.output
    assert (tmp_path / "out" / "r.html").stat().st_size > 3_000_000
    res = runner.invoke(app, ["report", "--study", "capacity", "--storage", url, "--format", "latex"])
    assert res.exit_code == 0 and (tmp_path / "report.tex").read_text().startswith("% h2s-search report")
    res = runner.invoke(app, ["report", "--study", "capacity", "--storage", url, "--format", "pdf"])
    assert res.exit_code == 2 and "--format must be one of html, latex" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["report", "--study", "nope", "--storage", url])
    assert res.exit_code == 2 and "no study 'nope'" in res.output


# --------------------------------------------------------------------------- the browser
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# With no GPU, the WebGL of the parallel-coordinates plot runs on SwiftShader, whose driver reports
# performance notes through the console; they are not the page's messages.
GL_NOISE = ('"[.WebGL-', "GL Driver Message", "software WebGL")


def run_chromium(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_the_page_renders_in_headless_chromium_without_console_errors(capacity, tmp_path):
    from PIL import Image

    _, study = capacity
    res = write_report(study, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    # One browser run: the DOM after plotly has drawn, and a screenshot of the top of the page.
    run = run_chromium(chromium(), tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1280,2200",
                       "--hide-scrollbars", res.path.resolve().as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if (":CONSOLE" in line or "Uncaught" in line)
               and not any(noise in line for noise in GL_NOISE)]
    assert not console, console
    # plotly drew every figure: each div holds its rendered SVG.
    dom = run.stdout
    for name in res.figures:
        div = dom.split(f'id="fig-{name}"', 1)[1][:20000]
        assert 'class="main-svg"' in div, name
    assert dom.count('class="main-svg"') >= 2 * len(res.figures)
    assert "anchor V4" in dom  # the star's label, as rendered SVG text

    assert shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(1 << 24)
        assert im.size == (1280, 2200)
        assert colours is not None and len(colours) > 200  # text, lines, markers: not a blank page
        assert max(n for n, _ in colours) < 0.97 * im.size[0] * im.size[1]


def test_report_json_embeds_the_figures_data(capacity, tmp_path):
    # The figures are plotly JSON inside the page; the anchor's trial number is in the history data.
    _, study = capacity
    page = write_report(study, tmp_path / "r.html").path.read_text()
    calls = re.findall(r'Plotly\.newPlot\(\s*"fig-history",\s*(\[.*?\]),\s*\{', page, re.S)
    assert calls and json.loads(calls[0])[-1]["name"] == "anchor v4"
