"""`xmfast run --executor dask --address ADDR`: the plan's stages as tasks on a Dask cluster (a
scheduler and two single-threaded worker processes on loopback, started here), with the files of
a serial run at one thread; Ctrl-C and a worker killed mid-stage (SIGKILL) leave every stage
resumable or re-run, to the same files; a bad address, or options that do not go together, are
one error line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_jobs import files, sample_with_a_bad_rating, serial_files  # the same comparison, reference and bad file as --jobs
from xmfast import cluster as xc
from xmfast.experiment import ExperimentObserver, plan, read_experiment, run_experiment, stage_actions
from xmfast.runs import Run
from xmfast_cli.app import app

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills worker processes by pid (POSIX)")

# gmf++ is the long stage (three epochs of small batches over four markets): one to stop or kill
# after its first epoch while two are left
GRID = ('name = "cluster"\ndata = "{data}"\nout = "{out}"\ntargets = ["in"]\nmodels = ["pop", "cooc", "gmf", "gmf++"]\n'
        'seeds = [1]\ndevice = "cpu"\n[train]\nepochs = 2\n[train.gmf]\nepochs = 3\nbatch_size = 256\n')
LONG = "in/all/s1/gmf++"


@pytest.fixture(scope="module")
def grid(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The experiment file and the files of its serial run (here, one torch thread: a worker's)."""
    root = tmp_path_factory.mktemp("cluster")
    file = root / "grid.toml"
    file.write_text(GRID.format(data=sample_dir, out=root / "out"), encoding="utf-8")
    serial = serial_files(file, root / "out")
    assert {f"{LONG}/results.json", "in/all/s1/cooc/test.json", ".stages/in__all__s1__gmf++.json"} <= set(serial)
    return file, serial


@pytest.fixture(scope="module")
def dask_cluster():  # noqa: ANN201 - (address, client)
    """A scheduler and two worker processes of one thread each, on 127.0.0.1."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local:
        client = xc.connect(local.scheduler_address)
        try:
            yield local.scheduler_address, client
        finally:
            client.close()


class Watch(ExperimentObserver):
    """Records each stage's training starts (the epoch each began after) and, at the end of
    epoch 1 of LONG, calls `act` once."""

    def __init__(self, act) -> None:  # noqa: ANN001
        self.act, self.starts, self.acted = act, {}, False

    def on_stage_event(self, stage, event) -> None:  # noqa: ANN001
        if event.kind == "start":
            self.starts.setdefault(stage.id, []).append(event.epoch)
        if stage.id == LONG and event.kind == "epoch_end" and event.epoch == 1 and not self.acted:
            self.acted = True
            self.act()


def test_a_worker_killed_mid_stage_is_replaced_and_the_stage_resumes_to_the_serial_files(
        grid: tuple[Path, dict], dask_cluster: tuple) -> None:
    """SIGKILL to the worker process running gmf++ after its first epoch: Dask runs the task
    again on a worker, which finds the stage's checkpoint and resumes it (a second training start,
    after epoch 1, not 0); the run ends with the serial run's files byte for byte."""
    file, serial = grid
    _, client = dask_cluster
    exp = read_experiment(file)
    killed = []

    def kill() -> None:
        (worker,) = [w for w, keys in client.processing().items() if any(f" {LONG} " in str(k) for k in keys)]
        pid = client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watch = Watch(kill)
    try:
        result = run_experiment(plan(exp), observer=watch, executor=xc.DaskExecutor(client))
        assert killed and LONG in result.executed
        assert watch.starts[LONG][0] == 0 and watch.starts[LONG][-1] >= 1, watch.starts  # resumed, not restarted
        assert files(exp.out) == serial
    finally:
        shutil.rmtree(exp.out, ignore_errors=True)


def test_ctrl_c_leaves_the_running_stage_resumable_and_the_next_run_ends_with_the_serial_files(
        grid: tuple[Path, dict], dask_cluster: tuple) -> None:
    """Ctrl-C (KeyboardInterrupt in the submitting process) after gmf++'s first epoch: the task is
    cancelled, the worker stops the stage at its next batch as a serial Ctrl-C would (status
    interrupted, checkpoint kept, the run's lock released) before KeyboardInterrupt goes on; the
    same command through the CLI resumes it and ends with the serial run's files byte for byte."""
    file, serial = grid
    address, client = dask_cluster
    exp = read_experiment(file)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    watch = Watch(ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(plan(exp), observer=watch, executor=xc.DaskExecutor(client))
        assert watch.acted
        run = Run.open(exp.out / LONG)
        assert run.status == "interrupted" and 1 <= run.last_epoch() < 3  # stopped at a batch, not at its end
        with run.writing():  # the worker has let go of it
            pass
        assert stage_actions(plan(exp))[LONG] == "resume"
        assert json.loads((exp.out / ".stages" / "in__all__s1__gmf++.json").read_text())["status"] == "started"

        again = CliRunner().invoke(app, ["run", str(file), "--no-report", "--executor", "dask", "--address", address])
        assert again.exit_code == 0, again.output
        assert f"resuming train {LONG}" in again.output and "on the Dask cluster at" in again.output, again.output
        assert files(exp.out) == serial
    finally:
        shutil.rmtree(exp.out, ignore_errors=True)


def test_a_failing_stage_is_one_error_line_and_not_retried(grid: tuple[Path, dict], dask_cluster: tuple,
                                                         sample_dir: Path, tmp_path: Path) -> None:
    """A rating file with a bad line: the dataset stage fails on its worker; one error line naming
    file and line, exit status 2, no training starts."""
    address, _ = dask_cluster
    data = sample_with_a_bad_rating(sample_dir, tmp_path)
    file = tmp_path / "bad.toml"
    file.write_text(GRID.format(data=data, out=tmp_path / "out"), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(file), "--executor", "dask", "--address", address])
    assert result.exit_code == 2, result.output
    (line,) = [t for t in result.output.splitlines() if t.startswith("error:")]
    assert re.match(rf"error: {re.escape(str(data / 'de_5core.txt'))}:4: ", line), line
    assert "Traceback" not in result.output, result.output
    assert sorted(f.name for f in (tmp_path / "out" / ".stages").iterdir()) == ["in__dataset.json"]


@pytest.mark.parametrize(("options", "message"), [
    (["--executor", "dask", "--address", "tcp://127.0.0.1:1"],
     r"cannot reach a Dask scheduler at tcp://127\.0\.0\.1:1 \(Timed out trying to connect to tcp://127\.0\.0\.1:1 "
     r"after 1 s\); start one with `dask scheduler`"),
    (["--executor", "dask", "--address", "nonsense::"], r"--address nonsense::: invalid address"),
    (["--address", "tcp://127.0.0.1:8786"], r"--address is the Dask scheduler's, for --executor dask$"),
    (["--executor", "dask"], r"--executor dask needs the scheduler's address: --address tcp://HOST:8786"),
    (["--executor", "ray"], r"--executor ray: expected local \(this machine\) or dask"),
    (["--executor", "dask", "--address", "tcp://127.0.0.1:1", "--jobs", "2"],
     r"--jobs 2 starts worker processes on this machine; on a cluster its workers run the stages"),
])
def test_a_bad_address_or_options_that_do_not_go_together_are_one_error_line(
        grid: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, options: list[str], message: str) -> None:
    monkeypatch.setattr(xc, "CONNECT_TIMEOUT", 1.0)
    file, _ = grid
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(file), *options])
    assert time.monotonic() - t0 < 10
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert re.match(rf"error: {message}", line), line
    assert not read_experiment(file).out.exists()  # nothing written


def test_training_stages_ask_for_a_gpu_when_workers_offer_them_and_the_device_is_not_the_cpu(
        grid: tuple[Path, dict]) -> None:
    stages = plan(read_experiment(grid[0])).by_id()
    gpus = {"tcp://a:1": {"resources": {"GPU": 1.0}}, "tcp://b:1": {"resources": {}}}
    cpus = {"tcp://b:1": {"resources": {}}}
    assert xc.stage_resources("auto", stages[LONG], gpus) == xc.stage_resources("cuda", stages[LONG], gpus) == {"GPU": 1}
    assert xc.stage_resources("cpu", stages[LONG], gpus) is None  # a CPU experiment leaves the GPUs alone
    assert xc.stage_resources("auto", stages["in/dataset"], gpus) is None  # preparing needs no GPU
    assert xc.stage_resources("cuda", stages[LONG], cpus) is None  # no worker offers one: any worker
