"""The process the kill tests (tests/test_kills.py) fork their commands from.

It imports xmfast, torch and the CLI once and then, for each request on stdin (a JSON line
``{"args": [...], "kill_at": n or null, "timeout": s}``), forks a child that runs ``xmfast
ARGS`` in process and dies with os._exit(137) at its n-th write event (an open for writing, a
mkdir, a rename or replace), as a SIGKILL there would (or, with ``"interrupt_at": n``, sends
itself SIGINT there, as Ctrl-C would). It answers one JSON line per request:
``{"code", "events", "output"}``. It never computes anything itself: a child forked from a
process whose Rust (rayon) or torch thread pools have started can hang on them, which is why
the tests do not fork pytest's own process.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import select
import signal
import sys
import time

import torch
import torch._dynamo  # noqa: F401 - the first optimizer imports it: 10 s per child otherwise
import typer.main
import typer.testing
from typer.testing import CliRunner

from xmfast import experiment, report, training  # noqa: F401
from xmfast_cli import render  # noqa: F401
from xmfast_cli.app import app

KILLED = 137

# typer's CliRunner.invoke builds the click command from the CLI's function signatures on every
# call (0.07 s, a fifth of a short `train`); a fork of this process finds it built already.
_COMMAND = typer.main.get_command(app)
typer.testing._get_command = lambda _app: _COMMAND


def child(pipe: int, args: list[str], kill_at: int | None, interrupt_at: int | None = None) -> None:
    torch.set_num_threads(1)  # as in every reference run: bit-identical results need the same reductions
    # A process started in the background by a non-interactive shell (a CI job) inherits SIGINT
    # ignored, and Python then installs no handler: restore the one a terminal's Ctrl-C reaches.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from xmfast_cli import app as cli

    cli._ARGV[:] = args  # as main() records the command line (its "run the same command" messages)
    count = [0]

    def event() -> None:
        count[0] += 1
        if count[0] == kill_at:
            os._exit(KILLED)
        if count[0] == interrupt_at:  # Ctrl-C: a real SIGINT, raised as KeyboardInterrupt by Python's handler
            os.kill(os.getpid(), signal.SIGINT)

    def counted(fn, writes=lambda *a, **k: True):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            if writes(*a, **k):
                event()
            return fn(*a, **k)

        return wrapper

    def opens_for_writing(file, mode="r", *a, **k) -> bool:  # noqa: ANN001, ANN002, ANN003
        return isinstance(mode, str) and any(c in mode for c in "wxa+")

    builtins.open = io.open = counted(builtins.open, opens_for_writing)
    os.replace, os.rename, os.mkdir = counted(os.replace), counted(os.rename), counted(os.mkdir)
    result = CliRunner().invoke(app, args)
    output = " ".join(result.output.split())[-3000:]  # rich wraps lines at the terminal width
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f" [exception {result.exception!r}]"
    os.write(pipe, json.dumps({"code": result.exit_code, "events": count[0], "output": output}).encode())


def run(args: list[str], kill_at: int | None, timeout: float, interrupt_at: int | None = None) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            child(write_end, args, kill_at, interrupt_at)
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return {"code": -1, "events": 0, "output": f"hung for {timeout} s"}
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == KILLED:
        return {"code": KILLED, "events": kill_at, "output": ""}
    if code != 0 or not data:
        return {"code": -1, "events": 0, "output": f"child exited {code}: {data[-2000:]!r}"}
    return json.loads(data)


def main() -> None:
    answers = os.dup(1)  # the protocol's channel; anything else printed goes nowhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.write(answers, b"ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        answer = run(request["args"], request.get("kill_at"), request.get("timeout", 120.0), request.get("interrupt_at"))
        os.write(answers, (json.dumps(answer) + "\n").encode())


if __name__ == "__main__":
    main()
