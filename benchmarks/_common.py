"""Shared helpers of the benchmark scripts: machine description, timing, peak memory, tables.

Run the scripts as files (``python benchmarks/bench_prepare.py``), not with ``python -m`` from
the repository root: with ``-m`` the current directory comes first on ``sys.path`` and the
source tree's ``xmfast/`` (which has no compiled ``core``) would shadow the installed package.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"  # gitignored
REAL_DATA = Path("/work/shared/xmarket")
SAMPLE_DATA = ROOT / "data" / "sample"

# Wide tables when the output is not a terminal (RESULTS.md is made from redirected output).
console = Console(width=None if sys.stdout.isatty() else 140)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    from xmfast import core

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_model(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "xmfast": core.__version__,
        "core_threads": core.num_threads(),
        "core_path": core.__file__,
    }


def print_machine() -> dict[str, Any]:
    m = machine()
    console.print(
        f"[dim]{m['date']} | {m['cpu']} | nproc {m['nproc']} (affinity {m['affinity']}) | "
        f"{m['mem_gib']} GiB RAM | Python {m['python']} | xmfast {m['xmfast']} "
        f"(core threads {m['core_threads']}) from {Path(m['core_path']).parent}[/]",
        highlight=False,
    )
    return m


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def repeat(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    """Wall times of `n` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn)[0] for _ in range(n)]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_s: float, unit: str = "") -> str:
    """12.3 M/s, or 12.3 M samples/s with a unit."""
    unit = f" {unit.strip()}" if unit.strip() else ""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= div:
            return f"{per_s / div:.1f} {suffix}{unit}/s"
    return f"{per_s:.0f}{unit}/s"


def fmt_mibs(n_bytes: float, seconds: float) -> str:
    return f"{n_bytes / 2**20 / seconds:,.0f} MiB/s"


def spread(xs: Sequence[float]) -> str:
    return f"{fmt_s(min(xs))} – {fmt_s(max(xs))}"


def verdict(ok: bool) -> str:
    return "[bold green]met[/]" if ok else "[bold red]NOT met[/]"


def table(title: str, columns: Sequence[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    return t


def print_targets(verdicts: dict[str, bool]) -> None:
    """The closing table of a benchmark: each target and whether it was met."""
    summary = table("Targets", ["target", "result"])
    for name, ok in verdicts.items():
        summary.add_row(name, verdict(ok))
    console.print(summary)


def vm_hwm_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def vm_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n:.0f} B"


def synth_dir(config: Any) -> Path:
    """Cache directory of a synthetic data set under benchmarks/_work."""
    name = f"synth-{len(config.markets)}m-{config.ratings}r-{config.items}i-s{config.seed}"
    if config.mean_per_user != 9.0:
        name += f"-u{config.mean_per_user:g}"
    return WORK / name


def ensure_synth(config: Any, directory: Path | None = None) -> tuple[Path, float | None, list[dict] | None]:
    """Generates the synthetic set of `config` unless `directory/synth.json` already records the
    same configuration. Returns (directory, generation seconds or None when cached, files)."""
    import json
    from dataclasses import asdict

    from xmfast.synth import synthesize

    directory = directory or synth_dir(config)
    meta = directory / "synth.json"
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text())["config"]
        except (ValueError, KeyError):
            saved = None
        files_ok = all((directory / f"{m}_5core.txt").is_file() for m in config.markets)
        if saved == json.loads(json.dumps(asdict(config))) and files_ok:
            return directory, None, None
    if directory.is_dir():  # stale or partial: start clean so `sources="all"` sees only these files
        for old in list(directory.glob("*_5core.txt")) + list(directory.glob(".*.partial")) + [meta]:
            old.unlink(missing_ok=True)
    seconds, files = timed(lambda: synthesize(directory, config))
    return directory, seconds, files


def dir_bytes(directory: Path, pattern: str = "*_5core.txt") -> int:
    return sum(p.stat().st_size for p in Path(directory).glob(pattern))


class OtherLoad:
    """How much CPU other processes used while this script ran (from /proc/stat minus our own
    and our waited-for children's CPU time), to flag timings taken on a busy machine."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / self.hz
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[2] - self.start[2]
        if wall <= 0:
            return None
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall)

    def report(self) -> None:
        c = self.cores()
        if c is None:
            return
        n = os.cpu_count() or 1
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        style = "bold yellow" if c > 0.2 else "dim"
        console.print(
            f"[{style}]other processes used on average {c:.2f} of {n} cores while this ran "
            f"(load average now {' '.join(load)}){'; timings are likely inflated' if c > 0.2 else ''}[/]",
            highlight=False,
        )


def print_torch(device_name: str) -> tuple[Any, str]:
    """The torch device of `device_name` and a label naming its GPU, after printing the torch
    version and thread count (torch is imported here only, so data benchmarks never load it)."""
    import torch

    device = torch.device(device_name)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    console.print(f"[dim]torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}{gpu}[/]",
                  highlight=False)
    return device, gpu
