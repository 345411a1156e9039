"""Pinned results: every built-in model, trained with a fixed seed on CPU on the embedded sample,
gives exactly the numbers in tests/pinned_results.json (valid and test aggregates, selected
epoch, loss of each epoch), compared with ==, not approx.

Why: a refactor of the model registry, the training engine or the planner (issue 19) must not
move a single bit of any model's results; an approximate comparison would let a changed
initialisation order, RNG draw or summation order through.

Torch and numpy's BLAS run on one thread here (threadpoolctl), so the numbers do not depend on the machine's core count.

The numbers are the platform's too: the same code, torch and seed give other last bits on
another CPU (MKL's matrix products take other code on an AMD EPYC than on an AVX-512 Xeon), and
two epochs compound them (mlp++'s test HR@10 moves 6% between the platforms recorded). So the file
holds one set per platform (`platform()`: CPU vendor, AVX-512 or not, L2 size, torch's version),
compared exactly. Two Intel models (family 6 models 167 and 207, both AVX-512 and 2 MiB of L2)
gave the same bits for every model, so the CPU model is not part of the key.

On a platform the file has no set for, a model on which every recorded set agrees (the baselines,
EASE, GMF, MF: no thread- or ISA-dependent product) must still give those numbers exactly; a model
whose sets differ passes if it equals one of them and is otherwise skipped with the reason (its bits
there are unknown, not wrong): record that platform's set to check it.

Regenerating: ``XMFAST_PIN_WRITE=1 pytest tests/test_pinned.py`` writes this platform's set from
the current code instead of comparing. Use it only deliberately, when a change is meant to move
results, and say so (and why) in that commit's message; a change that moves results makes every
other platform's set stale: regenerate those there, or delete them.
"""

from __future__ import annotations

import json
import os
import platform as py_platform
from pathlib import Path
from typing import Any

import pytest
import torch
from threadpoolctl import threadpool_limits

from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare
from xmfast.training import finetune, train

PINNED = Path(__file__).with_name("pinned_results.json")
WRITE = os.environ.get("XMFAST_PIN_WRITE") == "1"

# Everything that determines the pinned numbers, in one place (adapt the calls below, not these
# values, if the API changes). Runs are trained in this order; "pretrained" names earlier runs
# (train's pretrained=), "finetune" the earlier run a fine-tuned model starts from.
_TRAIN = {"epochs": 2, "batch_size": 256, "seed": 7, "device": "cpu"}
SETTINGS: dict[str, Any] = {
    "prepare": {"target": "in", "sources": "all", "protocol": "forec", "seed": 42},
    "runs": {
        "pop": {"model": "pop"},
        "cooc": {"model": "cooc"},
        "gmf": {"model": "gmf", "train": _TRAIN},
        "mlp": {"model": "mlp", "train": _TRAIN},
        "nmf": {"model": "nmf", "train": _TRAIN, "pretrained": {"gmf": "gmf", "mlp": "mlp"}},
        "gmf++": {"model": "gmf++", "train": {**_TRAIN, "sources": ("all",)}},
        "mlp++": {"model": "mlp++", "train": {**_TRAIN, "sources": ("all",)}},
        "nmf++": {"model": "nmf++", "train": {**_TRAIN, "sources": ("all",)},
                  "pretrained": {"gmf": "gmf++", "mlp": "mlp++"}},
        "maml": {"model": "maml", "train": {**_TRAIN, "sources": ("all",)}, "pretrained": {"nmf": "nmf++"}},
        "forec": {"model": "forec", "finetune": "maml", "train": _TRAIN},
        "acmr": {"model": "acmr", "train": {**_TRAIN, "sources": ("all",)},
                 "config": {"embedding_dim": 8, "blocks": 1, "heads": 2, "history": 10}},
        "acmr-finetuned": {"model": "acmr", "finetune": "acmr", "train": _TRAIN,
                           "config": {"embedding_dim": 8, "blocks": 1, "heads": 2, "history": 10}},
        "magmf": {"model": "magmf", "train": {**_TRAIN, "sources": ("all",)}},
        "mamlp": {"model": "mamlp", "train": {**_TRAIN, "sources": ("all",)}},
        "manmf": {"model": "manmf", "train": {**_TRAIN, "sources": ("all",)}, "pretrained": {"gmf": "magmf", "mlp": "mamlp"}},
        "ease": {"model": "ease"},
        "ease++": {"model": "ease++", "train": {"sources": ("all",)}},
        "itemknn": {"model": "itemknn"},
        "mf": {"model": "mf", "train": _TRAIN},
        "sasrec": {"model": "sasrec", "train": {**_TRAIN, "negatives": 8},
                   "config": {"embedding_dim": 8, "blocks": 1, "heads": 2, "history": 10}},
        "easemix": {"model": "easemix"},
    },
}


def platform() -> str:
    """What the pinned numbers depend on besides the code (see the module docstring)."""
    cpu: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        cpu.setdefault(key.strip(), value.strip())
    l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
    # AVX-512 picks the kernels of the core's encoder and of MKL: a VM may hide it from a CPU model
    avx512 = ", AVX-512" if "avx512f" in cpu.get("flags", "").split() else ""
    return (f"{py_platform.machine()} {cpu.get('vendor_id', '?')}{avx512}, "
            f"L2 {l2.read_text().strip() if l2.is_file() else '?'}, torch {torch.__version__}")


def pinned() -> dict[str, Any]:
    """This platform's pinned set, or the file's first."""
    sets = json.loads(PINNED.read_text())
    return sets.get(platform(), next(iter(sets.values())))


def _which() -> str:
    """For failure messages: the set compared with."""
    sets = json.loads(PINNED.read_text())
    here = platform()
    return (f"this platform's set ({here!r})" if here in sets else
            f"every set of {PINNED.name}, which agree on this model and have none for this platform ({here!r})")


def _observed(run_dir: Path) -> dict[str, Any]:
    """What is pinned of one finished run: its results.json aggregates and selected epoch, and
    the loss of each epoch from metrics.jsonl (baselines have no epochs)."""
    results = json.loads((run_dir / "results.json").read_text())
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return {
        "selected_epoch": results["selected_epoch"],
        "valid": results["valid"],
        "test": results["test"],
        "loss": [json.loads(line)["loss"] for line in lines if line.strip()],
    }


def _train_all(ds: Any, root: Path) -> dict[str, Any]:
    target = SETTINGS["prepare"]["target"]
    dirs: dict[str, Path] = {}
    observed: dict[str, Any] = {}
    for name, s in SETTINGS["runs"].items():
        spec = get_model(s["model"])
        model_config = spec.config_type(**s.get("config", {}))
        if "finetune" in s:
            out = root / f"{name}-ft"
            config = spec.finetune_config(**s["train"])
            finetune(dirs[s["finetune"]], out, [target], model_config, config, model=s["model"])
            dirs[name] = out / target
        else:
            dirs[name] = root / name
            config = spec.train_config(**s.get("train", {}))
            pretrained = {k: dirs[v] for k, v in s.get("pretrained", {}).items()} or None
            assert train(ds, dirs[name], s["model"], model_config, config, pretrained=pretrained) is not None
        observed[name] = _observed(dirs[name])
    return observed


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Any]:
    """Every run of SETTINGS trained once for the module on one prepared sample; with
    XMFAST_PIN_WRITE=1 the results also replace tests/pinned_results.json."""
    root = tmp_path_factory.mktemp("pinned")
    ds = prepare(sample_dir, root / "ds", PrepareConfig(**SETTINGS["prepare"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # numpy's BLAS too (EASE's inverse and products): one thread, whatever pytest-xdist set
        with threadpool_limits(1):
            result = _train_all(ds, root / "runs")
    finally:
        torch.set_num_threads(threads)
    if WRITE:
        sets = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
        sets[platform()] = json.loads(json.dumps(result, sort_keys=True))  # a new one goes last: the first stays the fallback
        partial = PINNED.with_suffix(".partial")
        partial.write_text(json.dumps(sets, indent=1) + "\n")
        os.replace(partial, PINNED)  # whole or not at all: another process may be reading it
    return result


def test_every_builtin_model_is_pinned(observed: dict[str, Any]) -> None:
    from xmfast.models import model_names

    assert sorted(pinned()) == sorted(observed), f"compared with {_which()}"
    # the built-ins are the models xmfast itself declares (an installed example package adds others)
    builtin = {n for n in model_names() if type(get_model(n)).__module__ == "xmfast.models.builtin"}
    assert {get_model(s["model"]).name for s in SETTINGS["runs"].values()} == builtin
    assert len(builtin) == 16


@pytest.mark.parametrize("name", list(SETTINGS["runs"]))
def test_results_are_bit_identical_to_the_pinned_ones(observed: dict[str, Any], name: str) -> None:
    sets = json.loads(PINNED.read_text())
    assert all(name in pins for pins in sets.values()), \
        f"{name} is not in every set of {PINNED.name}; regenerate it deliberately (see the module docstring)"
    here = platform()
    if here not in sets and len({json.dumps(pins[name], sort_keys=True) for pins in sets.values()}) > 1:
        if any(observed[name] == pins[name] for pins in sets.values()):
            return
        pytest.skip(f"{PINNED.name} has no set for this platform ({here!r}) and its platforms' sets differ on "
                    f"{name}: XMFAST_PIN_WRITE=1 records this platform's (see the module docstring)")
    assert observed[name] == pinned()[name], f"compared with {_which()}"
