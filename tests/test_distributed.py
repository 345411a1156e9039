"""Distributed training (issue 8): ``torchrun --nproc-per-node 2`` on the CPU (gloo) trains as
one process does, and only rank 0 writes.

Two processes are started twice: once through the documented CLI form
(``torchrun … $(which xmfast) train``) for GMF, once with a worker script (below) that trains
through the library under an audit hook recording every file a rank writes, renames, creates or
removes under the runs directory.

Tolerance. Two ranks compute the same global batches (same negatives, same order) and each takes
half of every batch (MAML: half of the markets of every meta-step); DDP averages their gradients,
weighted so that the result is the gradient of the whole batch's mean loss. What differs from one
process is only the order of floating-point sums (two half sums added by the all-reduce instead
of one sum over the batch), and Adam, which divides by the gradients' root
mean square, carries those rounding differences into the weights, so the results agree closely
but not bit for bit. Measured on the sample: GMF (2 epochs, 86 steps) weights within 2.0e-6
(largest weight 0.56), per-epoch losses within 1.3e-8 relative, metrics identical; MAML 7e-7
and FOREC 1e-6 on the weights. The test allows 2e-5 on weights, 1e-6 relative on losses and
1e-3 on the ranking metrics. (ACMR, a transformer, is not compared: there the same rounding
differences grow to ~1e-2 in two epochs, as large as between one process run with one thread and
with two, and its dropout masks are drawn per rank.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xmfast.dataset import PreparedDataset
from xmfast.models.maml import MAMLModelConfig
from xmfast.models.ncf import NMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, finetune, train

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
XMFAST = shutil.which("xmfast") or str(Path(sys.executable).with_name("xmfast"))
WEIGHTS_TOL = 2e-5
LOSS_RTOL = 1e-6
METRIC_TOL = 1e-3


def _torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


def _close(a: Run, b: Run, metric_tol: float = METRIC_TOL) -> None:
    """`b` trained as `a`: per-epoch losses, weights and final metrics within the tolerances."""
    la, lb = a.read_metrics(), b.read_metrics()
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb]
    assert [r["instances"] for r in la] == [r["instances"] for r in lb]
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=LOSS_RTOL)
    wa = torch.load(a.last_checkpoint, weights_only=False)["model"]
    wb = torch.load(b.last_checkpoint, weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < WEIGHTS_TOL, f"weights differ by {worst}"
    ra, rb = a.results(), b.results()
    assert ra["selected_epoch"] == rb["selected_epoch"]
    for split in ("valid", "test"):
        for m, v in ra[split].items():
            assert rb[split][m] == pytest.approx(v, abs=metric_tol), (split, m)


# The in-process trainings on one thread, as each torchrun rank (OMP_NUM_THREADS=1).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("dist")
    prepare(sample_dir, root / "ds", PrepareConfig(target="in", sources="all"))
    return root


def test_cli_gmf_on_two_ranks_matches_one_process(root: Path) -> None:
    """``torchrun --nproc-per-node 2 $(which xmfast) train …`` (batches of 256 over 10,815
    instances: the last batch of 63 splits 32/31) against the same training in this process."""
    ds = root / "ds"
    one = train(PreparedDataset.load(ds), root / "gmf-one", "gmf",
                config=TrainConfig(epochs=2, batch_size=256, seed=7, device="cpu"))
    assert one is not None
    done = _torchrun([XMFAST, "train", str(ds), "-m", "gmf", "-o", str(root / "gmf-two"), "--epochs", "2",
                      "--batch-size", "256", "--seed", "7", "--device", "cpu"], cwd=root)
    assert done.stdout.count("gmf → ") == 1  # the summary, printed by rank 0 alone
    two = Run.open(root / "gmf-two")
    assert two.status == "finished" and len(two.read_metrics()) == 2
    _close(one.run, two)


WORKER = textwrap.dedent('''
    """Trains through the library on every rank; records what each rank wrote under RUNS."""
    import json, os, sys
    from pathlib import Path

    RUNS = Path(sys.argv[1]).resolve()
    rank = int(os.environ["RANK"])
    touched = []

    def hook(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            writes = any(c in (mode or "") for c in "wax+") or (mode is None and flags & (os.O_WRONLY | os.O_RDWR))
            if writes and str(Path(os.fsdecode(args[0])).resolve()).startswith(str(RUNS)):
                touched.append(("open", os.fsdecode(args[0])))
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            path = args[1] if event == "os.rename" else args[0]
            if str(Path(os.fsdecode(path)).resolve()).startswith(str(RUNS)):
                touched.append((event, os.fsdecode(path)))

    sys.addaudithook(hook)

    from xmfast.dataset import PreparedDataset
    from xmfast.models.maml import MAMLModelConfig
    from xmfast.models import get_model
    from xmfast.models.acmr import ACMRConfig
    from xmfast.models.ncf import NMFConfig
    from xmfast.training import TrainConfig, finetune, resume, train

    ds = PreparedDataset.load(RUNS.parent / "ds")
    acmr_ds = PreparedDataset.load(RUNS.parent / "ds-acmr")
    out = {}
    # GMF with batches of 5,407 over 10,815 instances: the last batch (1 instance) leaves rank 1
    # without one; uninterrupted, and interrupted after one epoch then resumed.
    big = TrainConfig(epochs=2, batch_size=5407, seed=3, device="cpu")
    out["gmf"] = train(ds, RUNS / "gmf-big", "gmf", config=big).test.aggregate()
    assert train(ds, RUNS / "gmf-cut", "gmf", config=big, stop_after=1) is None
    out["gmf-resumed"] = resume(RUNS / "gmf-cut").test.aggregate()
    maml = TrainConfig(epochs=1, batch_size=256, seed=1, sources=("jp",), device="cpu")
    nmf = NMFConfig(pretrained=False)
    out["maml"] = train(ds, RUNS / "maml", "maml", MAMLModelConfig(nmf=nmf), maml).test.aggregate()
    forks = finetune(RUNS / "maml", RUNS / "forec", ["in", "jp"], model="forec", config=TrainConfig(epochs=1, batch_size=256,
                     lr=0.01, l2=1e-3, device="cpu"))
    out["forec"] = {m: r.test.aggregate() for m, r in forks.items()}
    tiny = ACMRConfig(embedding_dim=16, blocks=1, heads=2, history=10)
    acmr = get_model("acmr").train_config(epochs=1, batch_size=512, device="cpu")
    out["acmr"] = train(acmr_ds, RUNS / "acmr", "acmr", tiny, acmr).test.aggregate()
    tuned = finetune(RUNS / "acmr", RUNS / "acmr-ft", model="acmr", config=acmr)
    out["acmr-ft"] = tuned["in"].test.aggregate()
    out["touched"] = touched
    (RUNS.parent / f"rank{rank}.json").write_text(json.dumps(out))
''')


def test_every_trainer_on_two_ranks_writes_from_rank_0_only(root: Path, sample_dir: Path) -> None:
    """GMF (with a rank left without instances in a last batch of one, and an interrupted run
    resumed), MAML, FOREC fine-tuning on two markets, ACMR pre-training and fine-tuning, all on
    two ranks: every run is finished with one metrics line per epoch, every rank returns rank 0's
    results, rank 1 wrote nothing under the runs directory, and GMF, MAML and FOREC match one
    process."""
    data = PreparedDataset.load(root / "ds")
    runs = root / "runs"
    prepare(sample_dir, root / "ds-acmr", PrepareConfig(target="in", sources="all", protocol="acmr"))
    base = TrainConfig(epochs=1, batch_size=256, seed=1, sources=("jp",), device="cpu")
    # MAML starts from an NMF++ run (found next to it)
    assert train(data, runs / "nmf", "nmf", NMFConfig(pretrained=False), base) is not None
    one = root / "one"  # the same trainings in this process
    assert train(data, one / "gmf-big", "gmf", config=TrainConfig(epochs=2, batch_size=5407, seed=3, device="cpu"))
    assert train(data, one / "maml", "maml", MAMLModelConfig(nmf=NMFConfig(pretrained=False)), base,
                 pretrained={"nmf": runs / "nmf"})
    assert finetune(one / "maml", one / "forec", ["in"], model="forec", config=TrainConfig(epochs=1, batch_size=256, lr=0.01,
                                                                            l2=1e-3, device="cpu"))["in"]
    (root / "worker.py").write_text(WORKER)
    _torchrun([str(root / "worker.py"), str(runs)], cwd=root)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["touched"] == [], ranks[1]["touched"]
    assert any(event == "os.rename" for event, _ in ranks[0]["touched"])  # the hook does see rank 0's writes
    for key in ("gmf", "gmf-resumed", "maml", "forec", "acmr", "acmr-ft"):
        assert ranks[0][key] == ranks[1][key], key  # every rank returns rank 0's results
    returned = {"gmf-big": ranks[0]["gmf"], "gmf-cut": ranks[0]["gmf-resumed"], "maml": ranks[0]["maml"],
                "forec/in": ranks[0]["forec"]["in"], "forec/jp": ranks[0]["forec"]["jp"], "acmr": ranks[0]["acmr"],
                "acmr-ft/in": ranks[0]["acmr-ft"]}
    for name, test in returned.items():
        run = Run.open(runs / name)
        epochs = 2 if name.startswith("gmf") else 1
        assert run.status == "finished", name
        assert [r["epoch"] for r in run.read_metrics()] == list(range(1, epochs + 1)), name
        assert run.results()["test"] == test, name
        assert not list(run.path.rglob(".*.partial")), name
    # the interrupted and resumed run is the uninterrupted one, to the last digit
    def timeless(run: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "instances_per_s")}
                for r in Run.open(runs / run).read_metrics()]

    assert timeless("gmf-cut") == timeless("gmf-big")
    cut, whole = (torch.load(runs / r / "checkpoints" / "last.pt", weights_only=False)["model"]
                  for r in ("gmf-cut", "gmf-big"))
    assert all(torch.equal(cut[k], whole[k]) for k in whole)
    assert ranks[0]["gmf-resumed"] == ranks[0]["gmf"]
    for name in ("gmf-big", "maml", "forec/in"):
        _close(Run.open(one / name), Run.open(runs / name))
