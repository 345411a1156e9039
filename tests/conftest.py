"""Shared fixtures: locations of the embedded sample and of the real XMarket files."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "data" / "sample"
XMARKET_DIR = ROOT.parent / "shared" / "xmarket"
MARKETS_7 = ["ca", "de", "fr", "in", "jp", "mx", "uk"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`pytest -n auto`, as CI runs the suite), each worker's torch, and the
    commands its tests start, get the worker's share of the cores: torch would otherwise start
    as many threads as the machine has cores in every worker, and N workers' tiny models would
    fight over the same cores. A serial run, and an explicit OMP_NUM_THREADS, are left alone."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // int(workers)))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
    if "torch" in sys.modules:  # imported by a plugin already: it has read the variables
        sys.modules["torch"].set_num_threads(int(threads))


@pytest.fixture(scope="session")
def xmarket_dir() -> Path:
    """The real XMarket Electronics 5-core files (present in CI beside the checkout)."""
    if not (XMARKET_DIR / "uk_5core.txt").is_file():
        # CI always has ../shared beside the clone: there a missing file is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"real XMarket files not found at {XMARKET_DIR} (CI must provide ../shared/xmarket)")
        pytest.skip(f"real XMarket files not found at {XMARKET_DIR}")
    return XMARKET_DIR


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


def write_text(path: Path, text: str | bytes, *, gz: bool = False) -> Path:
    data = text.encode() if isinstance(text, str) else text
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def dataset(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample prepared for target in with source uk (once per test module, read-only: tests
    that damage it work on a copy)."""
    from typer.testing import CliRunner

    from xmfast_cli.app import app

    out = tmp_path_factory.mktemp("prepared") / "ds"
    result = CliRunner().invoke(app, ["prepare", str(sample_dir), "-t", "in", "-s", "uk", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def one_thread():
    """torch on one thread for the test: its results then do not depend on the machine's core
    count (a different number of threads sums in a different order), and tiny models run no
    slower, without two threads fighting over a busy CI machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
