"""An experiment's stages on a Dask cluster (``xmfast run EXP --executor dask --address ADDR``).

Dask distributed rather than Ray: it installs as pure-Python wheels, a cluster is two commands
(``dask scheduler``, then ``dask worker ADDR`` on each machine), and worker ``resources`` give
each stage a GPU of its own. Nothing here schedules or talks to machines itself: each stage is
a Dask task (:func:`run_stage`) submitted once every stage it reads is finished, and the rest
(placing tasks, re-running a task whose worker died) is Dask's.

The executor keeps the --jobs contract (:func:`xmfast.experiment.run_experiment`): the
submitting process alone writes the ledger (``OUT/.stages``); a worker writes only its stage's
directory, under that run's lock, after looking at the ledger and outputs again (a stage re-run
after its worker died resumes from its last checkpoint, or restarts cleanly before one). The
machines must share the file system at the same paths (every path sent to a worker is made
absolute). A worker process runs one stage at a time with all its threads (``--nthreads``);
with GPUs, training stages ask for ``resources={"GPU": 1}``. Dask is imported only here, and
only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError
from xmfast.experiment import (Action, Experiment, ExperimentObserver, Plan, Stage, StageEvent, _execute, _heights,
                               _record, _Relay, _stage_action, start_stage)

CONNECT_TIMEOUT = 5.0  # seconds to reach the scheduler before one error line says so
STOP_WAIT = 30.0  # seconds Ctrl-C waits for each running stage to leave its checkpoint


def _require() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise XmfastError('the Dask executor needs Dask distributed: pip install "xmfast[cluster]"') from None


def connect(address: str, timeout: float | None = None) -> Any:
    """A ``distributed.Client`` of the scheduler at `address` (``tcp://HOST:8786``, or
    ``HOST:PORT``), or one XmfastError within `timeout` seconds when nothing answers there, the
    address is malformed or what answers is not a Dask scheduler. The address is probed first,
    so a failure leaves no half-made client behind (whose clean-up would print a traceback).
    `timeout` defaults to CONNECT_TIMEOUT."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    _require()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    from distributed import Client
    from distributed.comm import connect as open_comm

    async def probe() -> Any:
        comm = await open_comm(address, timeout=timeout)
        try:
            await asyncio.wait_for(comm.write({"op": "identity"}), timeout)
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    remedy = ("start one with `dask scheduler` and give the address it prints (tcp://HOST:8786), "
              "then start workers with `dask worker tcp://HOST:8786`")
    try:  # in a thread of its own: the caller may be inside an event loop already (a notebook)
        with ThreadPoolExecutor(1) as pool:
            identity = pool.submit(asyncio.run, probe()).result()
    except ValueError as e:  # a malformed address: said at once
        raise XmfastError(f"--address {address}: {e}; {remedy}") from None
    except Exception as e:  # noqa: BLE001 - refused, timed out, or something else answering: one line each
        reason = str(e) if isinstance(e, OSError) else "what answers there is not a Dask scheduler"
        raise XmfastError(f"cannot reach a Dask scheduler at {address} ({reason}); {remedy}") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise XmfastError(f"{address} answers, but not as a Dask scheduler; {remedy}")
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - gone between the probe and now
        raise XmfastError(f"cannot connect to the Dask scheduler at {address} ({e}); {remedy}") from None


def _absolute(exp: Experiment) -> Experiment:
    """`exp` with every path absolute: a worker's current directory is its own."""
    data = exp.data
    data = replace(data, dir=None if data.dir is None else data.dir.absolute(),
                   files=tuple((m, p.absolute()) for m, p in data.files), ignore=tuple(p.absolute() for p in data.ignore))
    return replace(exp, out=exp.out.absolute(), data=data, path=None if exp.path is None else exp.path.absolute())


_ONE_STAGE = threading.Lock()  # one stage at a time per worker process: torch's threads are process-wide


class _ClusterRelay(_Relay):
    """The worker side of a stage's progress: each training hook goes to the submitting
    process as a Dask event, and a stage whose task was cancelled (Ctrl-C there, or its client
    gone) stops at its next batch as a Ctrl-C would stop it (resumable)."""

    def __init__(self, send: Any, cancelled: Any) -> None:
        super().__init__(send)
        self.cancelled = cancelled

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self._check()
        super().on_epoch_start(epoch, batches)

    def on_batch(self, mean_loss: float | None, instances: int) -> None:
        self._check()
        super().on_batch(mean_loss, instances)

    def _check(self) -> None:
        if self.cancelled():
            raise KeyboardInterrupt


def run_stage(exp: Experiment, stage: Stage, needed: dict[str, Stage], stop_after: int | None,
              tensorboard: Path | None, topic: str) -> tuple[Any, ...]:
    """A stage as a Dask task: ``("done", finished)``, ``("error", message)`` for a user's error
    (not retried: it would fail again), ``("crash", traceback)`` for a bug, ``("interrupted",)``
    when cancelled. What to do is decided here, from the ledger and outputs as they are now: a
    task Dask re-runs because its worker died continues that worker's checkpoint. torch uses
    the worker's threads (``dask worker --nthreads``), as does the Rust core; progress goes out
    on `topic`."""
    import os
    import traceback

    from distributed import get_worker

    worker = get_worker()
    # The Rust core's pool is sized once, at its first use in the process: the worker's threads
    # too (unless the worker was started with RAYON_NUM_THREADS), not every core of the machine.
    os.environ.setdefault("RAYON_NUM_THREADS", str(worker.state.nthreads))
    from xmfast import core

    key = worker.get_current_task()

    def log(*message: Any) -> None:
        worker.log_event(topic, json.dumps(message))

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state == "cancelled"

    with _ONE_STAGE:
        if cancelled():
            return ("interrupted",)
        log("began", stage.id)
        try:
            action: Action = _stage_action(exp, stage)
            if action == "cached":  # finished by an earlier attempt whose worker died before it said so
                return ("done", True)
            if stage.kind != "prepare":  # (a worker that only prepares never imports torch)
                import torch

                torch.set_num_threads(worker.state.nthreads)
            relay = _ClusterRelay(lambda m: log("event", stage.id, asdict(m[1])), cancelled)
            finished = _execute(exp, stage, action, needed, relay, stop_after, tensorboard)
        except KeyboardInterrupt:
            return ("interrupted",)
        except (XmfastError, core.DataFormatError) as e:
            return ("error", str(e))
        except Exception:  # noqa: BLE001 - a bug: its traceback, for the submitting process to raise
            return ("crash", traceback.format_exc())
        finally:
            log("left", stage.id)
        return ("done", finished)


def stage_resources(device: str, stage: Stage, workers: dict[str, Any]) -> dict[str, float] | None:
    """What a stage asks of its worker: one GPU for a training stage when some worker offers
    GPUs (``dask worker --resources GPU=1``) and the experiment's device is not the CPU; else
    nothing (any worker). `workers`: the scheduler's, as ``Client.scheduler_info()`` lists them."""
    offered = any(w.get("resources", {}).get("GPU") for w in workers.values())
    return {"GPU": 1} if offered and device != "cpu" and stage.kind != "prepare" else None


class DaskExecutor:
    """Runs a plan's stages as tasks on the Dask cluster of `client` (see the module docstring);
    give it to :func:`xmfast.experiment.run_experiment` as ``executor``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._counted = (0.0, 1)  # (when, connected workers)

    def _workers(self) -> dict[str, Any]:
        return dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _slots(self) -> int:
        """Stages to keep submitted: one per connected worker (asked of the scheduler at most
        every 2 s; workers may join and leave during a run), at least one."""
        when, _ = self._counted
        if time.monotonic() - when > 2.0:
            self._counted = (time.monotonic(), max(1, len(self._workers())))
        return self._counted[1]

    def run(self, p: Plan, actions: dict[str, Action], observer: ExperimentObserver, stop_after: int | None,
            tensorboard: Path | None) -> dict[str, float]:
        """Submits each stage to do once every stage it reads is finished, longest chain first,
        at most one per connected worker at a time (later ones wait here, where the order is
        known, not in a worker's queue); records each outcome in the ledger. Ctrl-C cancels
        every task, waits for running stages to leave their checkpoints, and goes on as
        KeyboardInterrupt; a stage's error cancels the others and is raised."""
        exp = p.experiment
        stages = p.by_id()
        sent = _absolute(exp)
        by_id = {s.id: replace(s, path=s.path.absolute()) for s in p.stages}
        height = _heights(p)
        todo = sorted((s for s in p.stages if actions[s.id] != "cached"), key=lambda s: -height[s.id])
        total = len(todo)
        done = {s.id for s in p.stages if actions[s.id] == "cached"}
        workers = self._workers()
        topic = f"xmfast-{uuid.uuid4().hex}"
        inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        running: dict[str, tuple[Any, float]] = {}  # stage id -> (future, start)
        began: set[str] = set()
        seconds: dict[str, float] = {}
        failure: BaseException | None = None
        stopping = False

        def stop(reason: BaseException) -> None:
            nonlocal failure, stopping
            failure = failure or reason
            stopping = True
            if running:
                self.client.cancel([f for f, _ in running.values()], force=True)

        def hear(message: tuple[Any, ...]) -> None:
            nonlocal stopping
            what, sid = message[0], message[1]
            if what == "event":
                if sid in running:
                    observer.on_stage_event(by_id[sid], StageEvent(**message[2]))
                return
            if what == "began":
                began.add(sid)
                return
            if what == "left":
                began.discard(sid)
                if stopping:
                    running.pop(sid, None)
                return
            if sid not in running:  # "ended" of a stage already given up
                return
            future, t0 = running.pop(sid)
            stage = stages[sid]
            if future.status == "cancelled":
                if not stopping:
                    stop(XmfastError(f"stage {sid} was cancelled on the cluster (its scheduler restarted or forgot "
                                     f"it); its output is left resumable: run the experiment again to continue"))
                return
            try:
                outcome = future.result()
            except Exception as e:  # noqa: BLE001 - Dask's own failures, named below
                stop(_cluster_failure(sid, e))
                return
            if outcome[0] == "done":
                seconds[sid] = time.perf_counter() - t0
                if outcome[1]:
                    _record(exp, stage, "finished", seconds[sid])
                    observer.on_stage_end(stage, seconds[sid])
                    done.add(sid)
                else:  # stop_after: as with --jobs, nothing more starts
                    stopping = True
            elif outcome[0] == "error":
                stop(XmfastError(outcome[1]))
            elif outcome[0] == "crash":
                stop(RuntimeError(f"stage {sid} failed on a Dask worker:\n{outcome[1]}"))
            elif not stopping:  # cancelled on the worker's side alone
                stop(KeyboardInterrupt())

        def submit(stage: Stage) -> None:
            needed = {d: by_id[d] for d in (*stage.deps, *stage.pretrained.values())}
            resources = stage_resources(exp.device, stage, workers)
            future = self.client.submit(run_stage, sent, by_id[stage.id], needed, stop_after, tensorboard, topic,
                                        key=f"xmfast {stage.id} {uuid.uuid4().hex[:8]}", pure=False,
                                        resources=resources)
            running[stage.id] = (future, time.perf_counter())
            future.add_done_callback(lambda f, sid=stage.id: inbox.put(("ended", sid)))

        self.client.subscribe_topic(topic, lambda event: inbox.put(tuple(json.loads(event[1]))))
        try:
            try:
                while True:
                    slots = self._slots() if not stopping and todo else 0
                    while not stopping and len(running) < slots:
                        ready = next((s for s in todo if all(d in done for d in s.deps)), None)
                        if ready is None:
                            break
                        todo.remove(ready)
                        if not start_stage(exp, ready, actions, done, observer, total - len(todo), total):
                            continue
                        submit(ready)
                    if not running:
                        break
                    with contextlib.suppress(queue.Empty):
                        hear(inbox.get(timeout=1.0))
                        while True:
                            hear(inbox.get_nowait())
            except KeyboardInterrupt:
                stop(KeyboardInterrupt())
            if stopping:
                self._wait_for_stopped(began, hear, inbox)
        finally:
            if running:
                self.client.cancel([f for f, _ in running.values()], force=True)
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
        if failure is not None:
            raise failure
        return seconds

    @staticmethod
    def _wait_for_stopped(began: set[str], hear: Any, inbox: queue.Queue) -> None:
        """After a stop: until each stage that had begun on a worker has left it (its checkpoint
        saved, its run unlocked), for at most STOP_WAIT seconds; a second Ctrl-C waits no more."""
        deadline = time.monotonic() + STOP_WAIT
        try:
            while began and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    hear(inbox.get(timeout=0.2))
        except KeyboardInterrupt:
            return


def _cluster_failure(sid: str, error: BaseException) -> XmfastError:
    """One line for a task Dask gave up on: its workers kept dying, or it never started."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        return XmfastError(f"stage {sid}: every worker that ran it died (Dask's allowed-failures, "
                           f"distributed.scheduler.allowed-failures, was reached); its output is left resumable: look "
                           f"at the workers' logs (memory?) and run the experiment again to continue")
    return XmfastError(f"stage {sid} could not run on the cluster ({type(error).__name__}: {error}); the workers "
                       f"need the same xmfast (and its Python packages) as this process")


__all__ = ["CONNECT_TIMEOUT", "DaskExecutor", "connect", "run_stage", "stage_resources"]
