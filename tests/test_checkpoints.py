"""Checkpoints are untrusted input, and a pretrained run is chosen explicitly (issue 18, items 2
and 6): a checkpoint loads with ``weights_only=True``, so a crafted ``best.pt``/``last.pt`` whose
unpickling would run code is refused by every command that reads one (the marker file its
``__reduce__`` would create never appears); a zeroed, empty, truncated or foreign checkpoint is
one error line; checkpoints in the save format of the release before this change (unchanged:
``Trainer._state``) still load. Several matching pretrained runs are refused with the list and
the option that names one; the chosen run is printed and recorded in run.json. A directory of
runs (finetune's output) given to compare or evaluate names the runs inside."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from test_cli import assert_user_error, dir_bytes, invoke
from xmfast._io import digest_file
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.synth import SynthConfig, synthesize
from xmfast.training import CHECKPOINT_VERSION, TrainConfig, read_checkpoint, train

ONE = TrainConfig(epochs=1, batch_size=256, seed=42, sources=("uk",), device="cpu")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset (target in, source uk) and finished GMF++, MLP++ and NMF++ runs beside each
    other, plus an interrupted GMF++ run with one epoch done: seconds to make on one core."""
    root = tmp_path_factory.mktemp("ckpt")
    synthesize(root / "raw", SynthConfig(markets=["uk", "in"], ratings=1500, items=80, topics=5, seed=1))
    ds = prepare(root / "raw", root / "ds", PrepareConfig(target="in", sources=["uk"], eval_negatives=20))
    for model in ("gmf", "mlp", "nmf"):
        assert train(ds, root / "runs" / model, model, config=ONE) is not None
    assert train(ds, root / "cut", "gmf", config=replace(ONE, epochs=2), stop_after=1) is None
    return root


@pytest.fixture()
def tree(made: Path, tmp_path: Path) -> Path:
    """A private copy of the runs (the dataset stays shared: runs record its absolute path)."""
    for name in ("runs", "cut"):
        shutil.copytree(made / name, tmp_path / name)
    return tmp_path


class _Payload:
    """Unpickling this creates `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def craft(path: Path, marker: Path, writer: str) -> None:
    """A checkpoint that looks like xmfast's but unpickles to code execution: written by
    torch.save (a zip archive) or as a bare pickle."""
    state = {"version": CHECKPOINT_VERSION, "model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}
    if writer == "torch":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))


# ---- 1. the save format --------------------------------------------------------------------------

def test_checkpoints_in_the_unchanged_save_format_load_weights_only(made: Path) -> None:
    """The runs of the fixture are written by Trainer._state/_save, unchanged from the release
    before weights_only (13116f4; checked there by hand on gmf, mlp, nmf, maml, forec and acmr
    runs): every file loads with weights_only=True and passes the layout check of --resume."""
    for run_dir in [made / "runs" / m for m in ("gmf", "mlp", "nmf")] + [made / "cut"]:
        run = Run.open(run_dir)
        last = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
        assert set(last) == {"version", "dataset", "model_name", "epoch", "model", "optimizer", "stopping",
                             "torch_rng", "cuda_rng"}
        assert last["epoch"] == 1 and last["stopping"]["best_epoch"] == 1 and last["model_name"] == run.model
        assert read_checkpoint(run.last_checkpoint, run, resumable=True)["epoch"] == 1
        assert set(read_checkpoint(run.best_checkpoint, run)) == {"version", "dataset", "model_name", "epoch", "model"}


# ---- 2. a checkpoint that would run code is refused everywhere ------------------------------------

def _evaluate(tree: Path) -> tuple[list[str | Path], Path]:
    return ["evaluate", tree / "runs" / "gmf"], tree / "runs" / "gmf" / "checkpoints" / "best.pt"


def _resume(tree: Path) -> tuple[list[str | Path], Path]:
    return ["train", "--resume", tree / "cut"], tree / "cut" / "checkpoints" / "last.pt"


def _finetune(tree: Path) -> tuple[list[str | Path], Path]:
    return (["finetune", tree / "runs" / "nmf", "-o", tree / "forec", "--epochs", "1", "--device", "cpu"],
            tree / "runs" / "nmf" / "checkpoints" / "best.pt")


def _nmf_pretrained(tree: Path) -> tuple[list[str | Path], Path]:
    return (["train", Run.open(tree / "runs" / "gmf").info["dataset"]["path"], "-m", "nmf", "--sources", "uk", "--epochs", "1", "--device", "cpu", "-o", tree / "runs" / "nmf2"],
            tree / "runs" / "gmf" / "checkpoints" / "best.pt")


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.parametrize("command", [_evaluate, _resume, _finetune, _nmf_pretrained],
                         ids=["evaluate", "train-resume", "finetune", "nmf-pretrained"])
def test_a_checkpoint_that_would_run_code_is_refused_and_never_executed(tree: Path, command, writer: str) -> None:  # noqa: ANN001
    args, checkpoint = command(tree)
    marker = tree / "MARKER"
    craft(checkpoint, marker, writer)
    before = dir_bytes(tree)
    # torch names the forbidden global in a zip archive; a bare pickle fails on its first opcode
    why = "refers to io.open" if writer == "torch" else "not a readable checkpoint"
    line = assert_user_error(invoke(*args), str(checkpoint), why)
    assert writer != "torch" or "loading it could run code" in line
    assert not marker.exists()
    assert dir_bytes(tree) == before  # nothing written: no half-made run, no status change


# ---- 3. damaged checkpoints under --resume ----------------------------------------------------------

@pytest.mark.parametrize("damage", ["zeroed", "empty", "truncated", "foreign"])
def test_a_damaged_last_checkpoint_under_resume_is_one_error_line(tree: Path, damage: str) -> None:
    last = tree / "cut" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "foreign":  # loads weights-only, but is not a resumable xmfast checkpoint
        torch.save({k: v for k, v in torch.load(last, weights_only=True).items() if k != "optimizer"}, last)
    else:
        last.write_bytes({"zeroed": bytes(len(data)), "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    before = dir_bytes(tree / "cut")
    line = assert_user_error(invoke("train", "--resume", tree / "cut"), str(last), "train the run again")
    assert ("no optimizer state" if damage == "foreign" else "damaged") in line
    assert dir_bytes(tree / "cut") == before


def test_a_checkpoint_of_other_shapes_under_resume_is_one_error_line(tree: Path) -> None:
    """Weights of another model (an MLP's) in a GMF run's last.pt: refused naming the file."""
    last = tree / "cut" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["model"] = torch.load(tree / "runs" / "mlp" / "checkpoints" / "best.pt", weights_only=True)["model"]
    torch.save(state, last)
    assert_user_error(invoke("train", "--resume", tree / "cut"), str(last), "do not fit the run's model")


# ---- 4. which pretrained run ----------------------------------------------------------------------

def test_two_matching_gmf_runs_are_refused_with_the_list_then_the_named_one_is_printed_and_recorded(tree: Path) -> None:
    runs = tree / "runs"
    dataset = Run.open(runs / "gmf").info["dataset"]["path"]
    shutil.copytree(runs / "gmf", runs / "gmf-again")  # a second finished GMF++ run that matches
    info = json.loads((runs / "gmf-again" / "run.json").read_text())
    info["train_config"]["seed"] = 7
    (runs / "gmf-again" / "run.json").write_text(json.dumps(info))
    args = ["train", dataset, "-m", "nmf", "--sources", "uk", "--epochs", "1", "--device", "cpu", "-o", runs / "nmf2"]
    line = assert_user_error(invoke(*args), "2 match", f"--gmf-run {runs / 'gmf'}")
    assert f"gmf run {(runs / 'gmf').resolve()} (seed 42" in line and f"gmf run {(runs / 'gmf-again').resolve()} (seed 7" in line
    assert not (runs / "nmf2").exists()

    result = invoke(*args, "--gmf-run", runs / "gmf-again")
    assert result.exit_code == 0, result.output
    gmf = (runs / "gmf-again").resolve()
    digest = digest_file(gmf / "checkpoints" / "best.pt")
    assert f"nmf starts from gmf run {gmf} (seed 7, sources uk, selected epoch 1, best.pt {digest[:12]})" in result.output
    assert f"nmf starts from mlp run {(runs / 'mlp').resolve()} (seed 42" in result.output
    recorded = Run.open(runs / "nmf2").info
    assert recorded["pretrained"] == {"gmf": str(gmf), "mlp": str((runs / "mlp").resolve())}
    assert recorded["pretrained_runs"]["gmf"] == {"path": str(gmf), "model": "gmf", "seed": 7, "sources": ["uk"],
                                                  "selected_epoch": 1, "checkpoint": "best.pt", "checkpoint_blake2b": digest}


def test_finetune_prints_and_records_its_base_run(tree: Path) -> None:
    result = invoke("finetune", tree / "runs" / "nmf", "-o", tree / "forec", "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    base = (tree / "runs" / "nmf").resolve()
    assert f"forec starts from nmf run {base} (seed 42, sources uk, selected epoch 1, best.pt" in result.output
    record = Run.open(tree / "forec" / "in").info["pretrained_runs"]["base"]
    assert record["path"] == str(base) and record["checkpoint_blake2b"] == digest_file(base / "checkpoints" / "best.pt")


# ---- 5. a directory of runs given where one run is expected ------------------------------------------

def test_compare_and_evaluate_name_the_runs_inside_a_finetune_output(tree: Path) -> None:
    out = tree / "forec"  # finetune's layout: one run per market
    for market in ("in", "uk"):
        shutil.copytree(tree / "runs" / "gmf", out / market)
    assert_user_error(invoke("compare", out, tree / "runs" / "mlp"), str(out), "a directory of runs (in, uk)",
                      f"e.g. {out / 'in'}")
    assert_user_error(invoke("compare", tree / "runs" / "mlp", out), "a directory of runs (in, uk)")
    assert_user_error(invoke("evaluate", out), str(out), "a directory of runs (in, uk)", f"xmfast evaluate {out / 'in'}")
    assert_user_error(invoke("compare", tree / "runs" / "mlp", tree / "cut" / "checkpoints"),
                      "a directory that is not a run (no run.json)")
