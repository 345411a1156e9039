"""What a finished run writes: the selected model evaluated on the target's validation and test
queries (valid.json, test.json, per user) and the summary results.json every table reads."""

from __future__ import annotations

from typing import Any

from xmfast.dataset import PreparedDataset
from xmfast.evaluation import EvalConfig, Evaluation, evaluate_scorer
from xmfast.runs import Run

FINAL_EVAL = EvalConfig(cutoffs=(5, 10, 20), measures=("hr", "ndcg", "mrr"))


def evaluate_run_splits(dataset: PreparedDataset, scorer: Any, run: Run, *, test_scorer: Any = None
                        ) -> tuple[Evaluation, Evaluation]:
    target = [dataset.target]
    valid = evaluate_scorer(dataset, "valid", scorer, FINAL_EVAL, markets=target)
    test = evaluate_scorer(dataset, "test", test_scorer or scorer, FINAL_EVAL, markets=target)
    for e in (valid, test):
        e.info["run"] = str(run.path)
        e.info["model"] = run.model
    valid.to_json(run.path / "valid.json")
    test.to_json(run.path / "test.json")
    return valid, test


def write_results(run: Run, selected_epoch: int | None, valid: Evaluation, test: Evaluation, extra: dict[str, Any]) -> None:
    from xmfast._io import write_json_atomic

    write_json_atomic(run.path / "results.json", {
        "model": run.model, "selected_epoch": selected_epoch, "target": valid.markets and run.info["target"],
        "valid": valid.aggregate(), "test": test.aggregate(), "queries": len(test), **extra,
    })
    run.save_info(status="finished")
