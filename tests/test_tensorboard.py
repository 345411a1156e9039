"""`--tensorboard DIR`: each run's per-epoch curves as in its metrics.jsonl, its settings with the
final metrics through the hparams plugin, one directory per trained stage of an experiment, a
resumed run with each epoch once, and tensorboard imported only when asked for.

The event files are read back with TensorBoard's own EventAccumulator. TensorBoard stores a
scalar as a 32-bit float, so the expected values are metrics.jsonl's rounded to float32."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xmfast_cli.app import app

import tensorboard  # noqa: E402,F401 - the test extra installs it: a missing one must fail here, not skip


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def hparams(logdir: Path) -> dict[str, object]:
    """The hyper-parameters of the run's hparams session, as plain values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    info = metadata.parse_session_start_info_plugin_data(acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}


def f32(x: float) -> float:
    return float(np.float32(x))


def curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the log of a run with these metrics.jsonl records must hold, epoch by epoch."""
    out: dict[str, list[tuple[int, float]]] = {"train/loss": [], "train/epoch_seconds": []}
    for r in records:
        out["train/loss"].append((r["epoch"], f32(r["loss"])))
        out["train/epoch_seconds"].append((r["epoch"], f32(r["seconds"])))
        for name, value in r["valid"].items():
            out.setdefault(f"valid/{name}", []).append((r["epoch"], f32(value)))
    return out


def test_train_logs_each_epoch_as_metrics_jsonl_and_the_settings_with_the_final_metrics(
        dataset: Path, tmp_path: Path, one_thread: None) -> None:
    from xmfast.models.ncf import GMFConfig
    from xmfast.models.schedule import TrainConfig

    run, tb = tmp_path / "gmf", tmp_path / "tb"
    result = CliRunner().invoke(app, ["train", str(dataset), "-m", "gmf", "-o", str(run), "--epochs", "2",
                                      "--device", "cpu", "--monitor", "hr@5", "--embedding-dim", "4",
                                      "--tensorboard", str(tb)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tb.iterdir()] == ["gmf"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and set(records[0]["valid"]) == {"hr@5", "hr@10", "ndcg@10"}
    final = json.loads((run / "results.json").read_text())
    expected = curves(records)
    for split in ("valid", "test"):
        expected.update({f"final/{split}/{m}": [(2, f32(v))] for m, v in final[split].items()})
    assert scalars(tb / "gmf") == expected
    hp = hparams(tb / "gmf")
    assert {f"gmf.{f.name}" for f in fields(GMFConfig)} | {f"train.{f.name}" for f in fields(TrainConfig)} \
        | {"model"} == set(hp)
    assert (hp["model"], hp["gmf.embedding_dim"], hp["train.epochs"], hp["train.monitor"]) == ("gmf", 4, 2, "hr@5")
    # the rate used (GMF's own default, lr being unset), None and an empty list as TensorBoard takes them
    assert (hp["train.lr"], hp["train.patience"], hp["train.sources"], hp["train.amp"]) == (0.005, "none", "", False)


def test_settings_are_flattened_to_values_tensorboard_takes() -> None:
    from xmfast.training.tensorboard import flat_hparams

    info = {"model": "nmf", "model_config": {"alpha": 0.5, "gmf": {"embedding_dim": 8}, "mlp": {"layers": [16, 8]}},
            "train_config": {"lr": None, "patience": 3, "sources": ["de", "uk"], "select": "best", "amp": False}}
    assert flat_hparams(info, learning_rate=0.01) == {
        "model": "nmf", "nmf.alpha": 0.5, "nmf.gmf.embedding_dim": 8, "nmf.mlp.layers": "16,8",
        "train.lr": 0.01, "train.patience": 3, "train.sources": "de,uk", "train.select": "best", "train.amp": False}


def test_a_resumed_run_has_each_epoch_once_whatever_its_log_held(dataset: Path, tmp_path: Path,
                                                                 one_thread: None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from xmfast.dataset import PreparedDataset
    from xmfast.models.ncf import GMFConfig
    from xmfast.runs import Run
    from xmfast.training import TrainConfig, resume, train

    run, tb = tmp_path / "gmf", tmp_path / "tb"
    config = TrainConfig(epochs=3, device="cpu")
    assert train(PreparedDataset.load(dataset), run, "gmf", GMFConfig(), config, stop_after=2, tensorboard=tb) is None
    log = tb / "gmf"
    assert scalars(log)["train/loss"] == curves(Run.open(run).read_metrics())["train/loss"]
    # A kill between the checkpoint and the log's write loses epoch 2 from the log; an earlier
    # attempt may have left a later epoch in it: the resumed run's curves hold neither.
    for f in log.glob("events.out.tfevents.*"):
        f.unlink()
    with SummaryWriter(str(log)) as stale:
        stale.add_scalar("train/loss", 99.0, 1)
        stale.add_scalar("valid/hr@10", 99.0, 3)
    from xmfast_cli.app import _run_interrupted  # what Ctrl-C tells: the resume that continues the curves

    assert _run_interrupted(run, "", tb).endswith(f"with `xmfast train --resume {run} --tensorboard {tb}`")
    assert resume(run, tensorboard=tb) is not None
    records = Run.open(run).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    got = scalars(log)
    assert {t: v for t, v in got.items() if not t.startswith("final/")} == curves(records)
    assert got["final/valid/ndcg@10"] == [(3, f32(json.loads((run / "results.json").read_text())["valid"]["ndcg@10"]))]


def test_finetune_logs_each_market_under_out_and_its_resume_continues_there(dataset: Path, tmp_path: Path,
                                                                             one_thread: None) -> None:
    from xmfast.dataset import PreparedDataset
    from xmfast.models.settings import NMFConfig
    from xmfast.runs import Run
    from xmfast.training import TrainConfig, finetune, resume, train

    base, tb = tmp_path / "nmf++", tmp_path / "tb"
    train(PreparedDataset.load(dataset), base, "nmf++", NMFConfig(pretrained=False), TrainConfig(epochs=1, device="cpu"))
    result = CliRunner().invoke(app, ["finetune", str(base), "-o", str(tmp_path / "forec"), "--markets", "in,uk",
                                      "--epochs", "1", "--device", "cpu", "--tensorboard", str(tb)])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tb).as_posix() for p in tb.glob("*/*")) == ["forec/in", "forec/uk"]
    for market in ("in", "uk"):
        records = Run.open(tmp_path / "forec" / market).read_metrics()
        assert {t: v for t, v in scalars(tb / "forec" / market).items() if not t.startswith("final/")} == curves(records)
        assert hparams(tb / "forec" / market)["model"] == "forec"
    # stopped after one of two epochs, then resumed: the same directory, each epoch once
    assert finetune(base, tmp_path / "ft", model="forec", config=TrainConfig(epochs=2, device="cpu"), stop_after=1,
                    tensorboard=tb) == {"in": None}
    assert resume(tmp_path / "ft" / "in", tensorboard=tb) is not None
    assert sorted(p.relative_to(tb).as_posix() for p in tb.glob("*/*")) == ["forec/in", "forec/uk", "ft/in"]
    assert [s for s, _ in scalars(tb / "ft" / "in")["train/loss"]] == [1, 2]


GRID = ('name = "tb"\ndata = "{data}"\nout = "{out}"\ntargets = ["in"]\nsources = ["uk"]\nmodels = ["pop", "gmf"]\n'
        'seeds = [1]\ndevice = "cpu"\n[train]\nepochs = 2\n')


def test_run_logs_each_trained_stage_under_its_id_and_cached_stages_write_nothing(
        sample_dir: Path, tmp_path: Path, one_thread: None) -> None:
    from xmfast.experiment import plan, read_experiment, run_experiment
    from xmfast.runs import Run

    file, out, tb = tmp_path / "grid.toml", tmp_path / "out", tmp_path / "tb"
    file.write_text(GRID.format(data=sample_dir, out=out), encoding="utf-8")
    # stopped after gmf's first epoch, as a kill would; the next `xmfast run` resumes it
    run_experiment(plan(read_experiment(file)), stop_after=1, tensorboard=tb)
    assert [p.relative_to(tb).as_posix() for p in tb.glob("*/*/*/*")] == ["in/single/s1/gmf"]  # pop: no training
    assert [s for s, _ in scalars(tb / "in/single/s1/gmf")["train/loss"]] == [1]
    result = CliRunner().invoke(app, ["run", str(file), "--tensorboard", str(tb), "--no-report"])
    assert result.exit_code == 0, result.output
    log = tb / "in/single/s1/gmf"
    records = Run.open(out / "in/single/s1/gmf").read_metrics()
    assert {t: v for t, v in scalars(log).items() if not t.startswith("final/")} == curves(records)
    assert hparams(log)["model"] == "gmf"
    written = {p: p.read_bytes() for p in tb.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["run", str(file), "--tensorboard", str(tb), "--no-report"])
    assert result.exit_code == 0 and "0 run" in result.output, result.output
    assert {p: p.read_bytes() for p in tb.rglob("*") if p.is_file()} == written


def test_without_tensorboard_installed_the_option_is_one_error_line_and_training_without_it_runs(
        dataset: Path, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    for name in ("tensorboard", "torch.utils.tensorboard"):  # an import of either now fails
        monkeypatch.setitem(sys.modules, name, None)
    run, tb = tmp_path / "gmf", tmp_path / "tb"
    file = tmp_path / "grid.toml"
    file.write_text(GRID.format(data=sample_dir, out=tmp_path / "out"), encoding="utf-8")
    for argv in (["train", str(dataset), "-m", "gmf", "-o", str(run), "--epochs", "1", "--tensorboard", str(tb)],
                 ["run", str(file), "--tensorboard", str(tb)]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            'error: --tensorboard needs the tensorboard package: pip install "xmfast[tensorboard]"']
    assert not run.exists() and not tb.exists() and not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["train", str(dataset), "-m", "gmf", "-o", str(run), "--epochs", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_a_log_directory_that_cannot_be_made_is_one_error_line_before_anything_is_written(
        dataset: Path, sample_dir: Path, tmp_path: Path) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("not a directory\n")
    file = tmp_path / "grid.toml"
    file.write_text(GRID.format(data=sample_dir, out=tmp_path / "out"), encoding="utf-8")
    for argv, where in ((["train", str(dataset), "-m", "gmf", "-o", str(tmp_path / "gmf"), "--epochs", "1"], taken / "x"),
                        (["run", str(file)], taken)):
        result = CliRunner().invoke(app, [*argv, "--tensorboard", str(where)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: --tensorboard: {taken} is not a directory; give a directory where TensorBoard's logs can be "
            "written"]
    assert not (tmp_path / "gmf").exists() and not (tmp_path / "out").exists() and taken.read_text() == "not a directory\n"


def _top_level_imports(path: Path) -> set[str]:
    """The modules a file imports when it is imported (module level, under if/try too; not in functions)."""
    found: set[str] = set()

    def walk(body: list) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
            elif isinstance(node, (ast.If, ast.Try)):
                walk(node.body + node.orelse + getattr(node, "finalbody", [])
                     + [n for h in getattr(node, "handlers", []) for n in h.body])

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_no_module_imports_tensorboard_when_it_is_imported() -> None:
    """tensorboard (and the module that uses it) are imported inside functions only, when a log
    is made: `import xmfast` and a training without the option never load it."""
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "xmfast").rglob("*.py"), *(root / "cli" / "purelib" / "xmfast_cli").rglob("*.py")]
    assert root / "xmfast" / "training" / "tensorboard.py" in files
    eager = {f"{f.relative_to(root)}: {m}" for f in files for m in _top_level_imports(f)
             if "tensorboard" in m.split(".")}
    assert eager == set()
