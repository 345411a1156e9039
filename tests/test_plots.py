"""The report's plots: a model keeps its colour from one report to the next, the legends stand
beside the data rather than on it, and epochs are counted in whole numbers. The runs are written
by hand (run.json, results.json, test.json, metrics.jsonl), so each case takes milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from xmfast.report import (
    MODEL_COLOURS,
    _plots,
    bars_figure,
    build_report,
    collect_runs,
    curves_figure,
    model_colour,
    plot_styles,
    ranks_figure,
)


def fake_run(root: Path, model: str, *, label: str | None = None, seed: int = 1, sources: tuple[str, ...] = (),
             epochs: int = 5, users: int = 30, target: str = "in") -> Path:
    """A finished run as the report reads it, with made-up but well-formed numbers."""
    path = root / f"{label or model}-{'-'.join(sources) or 'single'}-s{seed}"
    path.mkdir(parents=True)
    level = 0.1 + 0.03 * (sum(map(ord, label or model)) % 7)
    info = {"model": model, "label": label or model, "target": target,
            "train_config": {"seed": seed, "sources": list(sources)},
            "dataset": {"fingerprint": "f" * 64, "protocol": "forec", "path": str(root / "no-dataset")}}
    (path / "run.json").write_text(json.dumps(info))
    test = {"hr@5": level, "hr@10": level * 1.5, "ndcg@5": level * 0.8, "ndcg@10": level + 0.001 * seed}
    (path / "results.json").write_text(json.dumps({"target": target, "valid": test, "test": test,
                                                   "selected_epoch": epochs}))
    per_user = [{"market": target, "user": f"u{u}", "rank": (u * 7 + seed + len(model)) % 100,
                 "ndcg@10": ((u + seed) % 5) / 10} for u in range(users)]
    (path / "test.json").write_text(json.dumps({"per_user": per_user}))
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "valid": {"ndcg@10": level + 0.01 * e}}) + "\n" for e in range(1, epochs + 1)))
    return path


def report_of(root: Path, models: list[tuple[str, str, tuple[str, ...]]]):  # noqa: ANN201
    for model, label, sources in models:
        for seed in (1, 2):
            fake_run(root, model, label=label, seed=seed, sources=sources)
    return build_report(collect_runs([root]), published=[])


MANY = [("pop", "pop", ()), ("cooc", "cooc", ("de",)), ("gmf", "gmf", ()), ("mlp", "mlp", ()), ("nmf", "nmf", ()),
        ("gmf", "gmf++", ("de",)), ("mlp", "mlp++", ("de",)), ("nmf", "nmf++", ("de",)), ("maml", "maml", ("de",)),
        ("forec", "forec", ("de",)), ("acmr", "acmr", ("de",)), ("acmr", "acmr (pre-trained)", ("de",))]


def drawn(fig):  # noqa: ANN001, ANN201
    """`fig` laid out and drawn as the PNG is (the report saves through Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _legend(fig):  # noqa: ANN001, ANN202
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert len(legends) == 1
    return legends[0]


def _line_colours(fig) -> dict[str, str]:  # noqa: ANN001
    return {line.get_label(): to_hex(line.get_color()) for line in fig.axes[0].get_lines()
            if not line.get_label().startswith("_")}


def test_a_model_keeps_its_colour_between_reports_with_other_models(tmp_path: Path) -> None:
    # The old plots numbered the colours by position: nmf was the 5th colour of the palette in a
    # report of five models and the 1st in one that starts with it.
    small = report_of(tmp_path / "a", [("nmf", "nmf", ()), ("forec", "forec", ("de",))])
    large = report_of(tmp_path / "b", MANY)
    for report in (small, large):
        styles = plot_styles(report)
        curves = _line_colours(curves_figure(report.sections[0], styles))
        ranks = _line_colours(ranks_figure(report.sections[0], styles))
        assert curves["nmf"] == ranks["nmf"] == MODEL_COLOURS["nmf"].lower()
        assert curves["forec"] == MODEL_COLOURS["forec"].lower()
        from matplotlib.container import BarContainer

        bars = bars_figure(report, styles).axes[0].containers
        bar_colour = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in bars if isinstance(c, BarContainer)}
        assert bar_colour["nmf"] == MODEL_COLOURS["nmf"].lower()
    # a variant shares its model's hue and differs in line style; every row of the many looks different
    styles = plot_styles(large)
    assert styles["nmf++"].color == styles["nmf"].color and styles["nmf++"].linestyle != styles["nmf"].linestyle
    assert styles["acmr (pre-trained)"].color == styles["acmr"].color
    assert styles["acmr (pre-trained)"].linestyle != styles["acmr"].linestyle
    assert len({(s.color, str(s.linestyle)) for s in styles.values()}) == len(MANY)
    assert len({s.color for s in styles.values()}) == 8  # one hue per model, not twelve similar ones


def test_every_builtin_model_has_its_own_colour_and_other_models_a_stable_one() -> None:
    from xmfast.models.api import _BUILTIN

    assert set(MODEL_COLOURS) == set(_BUILTIN)
    assert len(set(MODEL_COLOURS.values())) == len(MODEL_COLOURS)
    assert model_colour("nmf++") == model_colour("nmf")
    # a label of the user's: the same colour in every process (a hash that Python does not salt)
    assert model_colour("my-scores") == model_colour("my-scores") and model_colour("my-scores").startswith("#")


def test_two_rows_that_would_look_alike_get_different_styles(tmp_path: Path) -> None:
    # two settings of one model in one market: same label, same colour, so the line style differs
    root = tmp_path / "runs"
    fake_run(root / "a", "gmf", seed=1)
    b = fake_run(root / "b", "gmf", seed=1)
    info = json.loads((b / "run.json").read_text())
    info["train_config"]["epochs"] = 3
    (b / "run.json").write_text(json.dumps(info))
    report = build_report(collect_runs([root]), published=[])
    styles = plot_styles(report)
    assert len(styles) == 2
    first, second = styles.values()
    assert first.color == second.color and first.linestyle != second.linestyle


def test_epoch_ticks_are_whole_numbers(tmp_path: Path) -> None:
    # five epochs: matplotlib's default locator put ticks at 1.0, 1.5, 2.0, ... (the quickstart's plots)
    report = report_of(tmp_path, [("gmf", "gmf", ()), ("nmf", "nmf", ())])
    fig = curves_figure(report.sections[0], plot_styles(report))
    drawn(fig)
    ax = fig.axes[0]
    labels = [t.get_text().replace("−", "-") for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(label.lstrip("-").isdigit() for label in labels), labels
    assert all(float(t) == int(t) for t in ax.get_xticks())


@pytest.mark.parametrize("which", ["curves", "ranks", "bars"])
def test_the_legend_stands_outside_the_data(tmp_path: Path, which: str) -> None:
    report = report_of(tmp_path, MANY)
    styles = plot_styles(report)
    fig = {"curves": lambda: curves_figure(report.sections[0], styles),
           "ranks": lambda: ranks_figure(report.sections[0], styles),
           "bars": lambda: bars_figure(report, styles)}[which]()
    renderer = drawn(fig)
    legend = _legend(fig).get_window_extent(renderer)
    ax = fig.axes[0]
    assert not legend.overlaps(ax.get_window_extent(renderer)), (legend, ax.get_window_extent(renderer))
    for label in ax.get_xticklabels() + ax.get_yticklabels() + [ax.xaxis.label, ax.yaxis.label]:
        if label.get_text():
            assert not legend.overlaps(label.get_window_extent(renderer)), label.get_text()
    # and inside the figure, which the saved PNG shows whole
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)


def test_the_report_writes_each_plot(tmp_path: Path) -> None:
    report = report_of(tmp_path / "runs", MANY)
    made = _plots(report, tmp_path / "plots")
    assert sorted(made) == ["bars", "curves-in-ffffffff", "ranks-in-ffffffff"]
    for name in made.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bars_have_a_panel_per_protocol_with_slots_for_its_own_models(tmp_path: Path) -> None:
    """The leaderboard's bars: seven markets under two protocols, the second with fewer models.
    One panel per protocol, each with only its models' slots (no empty third of every group), and
    the seven market labels of a panel side by side, not over one another (they were 'jp (acmr)mx
    (acmr)' in one panel of fourteen groups)."""
    markets = ["ca", "de", "fr", "in", "jp", "mx", "uk"]
    for target in markets:
        for model in ("pop", "ease", "gmf", "nmf", "sasrec", "easemix"):
            fake_run(tmp_path / "forec" / target, model, target=target)
        for model in ("pop", "ease"):
            path = fake_run(tmp_path / "acmr" / target, model, target=target)
            info = json.loads((path / "run.json").read_text())
            info["dataset"].update(protocol="acmr", fingerprint="a" * 64)
            (path / "run.json").write_text(json.dumps(info))
    report = build_report(collect_runs([tmp_path]), published=[])
    fig = bars_figure(report, plot_styles(report))
    renderer = drawn(fig)
    from matplotlib.container import BarContainer

    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["protocol acmr", "protocol forec"]
    slots = [[c.get_label() for c in ax.containers if isinstance(c, BarContainer)] for ax in panels]
    assert slots == [["pop", "ease"], ["pop", "ease", "gmf", "nmf", "sasrec", "easemix"]]
    for ax in panels:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in labels] == markets
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
    legend = _legend(fig)
    assert [t.get_text() for t in legend.get_texts()] == ["pop", "ease", "gmf", "nmf", "sasrec", "easemix"]
    for ax in panels:
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_a_markets_plots_under_two_protocols_have_two_titles(tmp_path: Path) -> None:
    """docs/leaderboard-tuned.md has a curves and a ranks plot of each market per protocol; their
    titles were the same ('ca: validation NDCG@10 per epoch ...'), so two pictures of one market
    could not be told apart. Each title names the protocol, stays inside the figure and clear of
    the legend (on one line, the quickstart's curves title ran into it)."""
    for protocol in ("forec", "acmr"):
        for path in (fake_run(tmp_path / protocol, "gmf", target="ca"),
                     fake_run(tmp_path / protocol, "acmr", label="acmr (pre-trained)", target="ca")):  # the longest label
            info = json.loads((path / "run.json").read_text())
            info["dataset"].update(protocol=protocol, fingerprint=protocol[0] * 64)
            (path / "run.json").write_text(json.dumps(info))
    report = build_report(collect_runs([tmp_path]), published=[])
    assert sorted(s.protocol for s in report.sections) == ["acmr", "forec"]
    styles = plot_styles(report)
    for make, what in ((curves_figure, "validation NDCG@10 per epoch (mean over seeds)"),
                       (ranks_figure, "share of test users with the positive in the top k")):
        titles = []
        for section in report.sections:
            fig = make(section, styles)
            renderer = drawn(fig)
            title = fig.axes[0].title
            titles.append(title.get_text())
            box = title.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (title.get_text(), box)
            assert not box.overlaps(_legend(fig).get_window_extent(renderer)), title.get_text()
        assert sorted(titles) == [f"ca, protocol acmr\n{what}", f"ca, protocol forec\n{what}"]
