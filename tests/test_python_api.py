"""The Python API speaks Python: its errors name the arguments of the function called
(``all_users=True``, ``overwrite=True``), while the command line's name its options; and what it
returns reads well in a notebook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from xmfast_cli.app import app

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, argument, cli_options
from xmfast.prepare import PrepareConfig, prepare
from xmfast.recommend import select_groups


def test_argument_is_spelled_for_the_caller() -> None:
    assert [argument("overwrite"), argument("device", "cuda"), argument("users", None), argument("pretrained", False)] \
        == ["overwrite=True", "device='cuda'", "users=…", "pretrained=False"]
    with cli_options({"users": "--user"}):
        assert [argument("overwrite"), argument("device", "cuda"), argument("users", None, metavar="ID"),
                argument("all_users"), argument("pretrained", False)] \
            == ["--overwrite", "--device cuda", "--user ID", "--all-users", "--no-pretrained"]
    assert argument("all_users") == "all_users=True"  # only within the block


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("api") / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=("de",)))
    return out


def test_select_groups_names_python_arguments(dataset: Path) -> None:
    ds = PreparedDataset.load(dataset)
    user = ds.users[int(ds.group_user[int(np.flatnonzero(np.asarray(ds.group_market) == ds.market_index("in"))[0])])]
    with pytest.raises(XmfastError) as e:
        select_groups(ds, [user], all_users=True)
    assert str(e.value) == "give either all_users=True or the users (users=…, users_file=…), not both"
    assert "--" not in str(e.value)  # the command line's spelling: tests/test_render.py (recommend)


def test_an_existing_output_asks_for_overwrite_in_the_callers_words(dataset: Path, sample_dir: Path) -> None:
    with pytest.raises(XmfastError) as e:
        prepare(sample_dir, dataset, PrepareConfig(target="in", sources=("de",)))
    assert str(e.value) == f"{dataset}: already exists (pass overwrite=True to replace it)"
    r = CliRunner().invoke(app, ["prepare", str(sample_dir), "-t", "in", "-s", "de", "-o", str(dataset)])
    assert r.exit_code == 2
    assert " ".join(r.output.split()) == f"error: {dataset}: already exists (pass --overwrite to replace it)"


def test_the_experiment_result_has_a_one_line_repr(tmp_path: Path, sample_dir: Path) -> None:
    from xmfast.experiment import plan, read_experiment, run_experiment

    path = tmp_path / "e.toml"
    path.write_text(f'name = "mini"\ndata = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\n'
                    'models = ["pop"]\nseeds = [1]\ndevice = "cpu"\n', encoding="utf-8")
    first = repr(run_experiment(plan(read_experiment(path))))
    assert first.startswith("<ExperimentResult mini: 2 stages, 2 run in ") and first.endswith(
        f" s, 0 cached; out {tmp_path / 'out'}>")
    again = repr(run_experiment(plan(read_experiment(path))))
    assert again == f"<ExperimentResult mini: 2 stages, 0 run in 0.0 s, 2 cached; out {tmp_path / 'out'}>"
    assert "\n" not in first and len(first) < 200  # the dataclass's repr printed the whole plan


def test_training_errors_name_python_arguments_from_python_and_options_from_the_cli(dataset: Path,
                                                                                    tmp_path: Path) -> None:
    """The same mistake, told in the caller's words: TrainConfig(sources=...) and pretrained={...}
    from Python, --sources and --gmf-run under the command line."""
    from typer.testing import CliRunner

    from xmfast.dataset import PreparedDataset
    from xmfast.errors import XmfastError
    from xmfast.training import TrainConfig, train
    from xmfast_cli.app import app

    data = PreparedDataset.load(dataset)
    with pytest.raises(XmfastError, match=r"give source markets \(TrainConfig\(sources=\('de',\)\), or \('all',\)\)"):
        train(data, tmp_path / "m", "maml", config=TrainConfig(epochs=1))
    with pytest.raises(XmfastError, match=r"give it with pretrained=\{'gmf': RUN\}, or pass pretrained=False"):
        train(data, tmp_path / "n", "nmf", config=TrainConfig(epochs=1))
    out = CliRunner().invoke(app, ["train", str(dataset), "-m", "maml", "-o", str(tmp_path / "m"), "--epochs", "1"])
    assert out.exit_code == 2 and "(--sources de, or all)" in out.output, out.output
    out = CliRunner().invoke(app, ["train", str(dataset), "-m", "nmf", "-o", str(tmp_path / "n"), "--epochs", "1"])
    assert out.exit_code == 2 and "give it with --gmf-run, or pass --no-pretrained" in out.output, out.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "n").exists()
