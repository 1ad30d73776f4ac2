"""Every expected CLI failure is one ``error:`` line and a non-zero exit status, never a traceback; bare
``python build_kernel.py`` follows the latest chain; defaults agree between the notebook, the fold YAML and
the chain."""

import subprocess
import sys
from pathlib import Path

import jupytext
import pandas as pd
import pytest

from kaggle_utils.kernel import __main__ as kernel_cli
from kaggle_utils.run import __main__ as run_cli
from kaggle_utils.run import config as run_config
from kaggle_utils.training import __main__ as training_cli
from kaggle_utils.training import config as training_config

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert training_cli.main(["--config", str(tmp_path / "fold0.yaml")]) == 2
    assert "fold0.yaml not found" in _one_error_line(capsys)
    (tmp_path / "bad.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    assert training_cli.main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown TrainConfig field(s) 'learning_rate'; known: [" in _one_error_line(capsys)
    (tmp_path / "broken.yaml").write_text("epochs: [2\n")
    assert training_cli.main(["--config", str(tmp_path / "broken.yaml")]) == 2
    assert "cannot parse" in _one_error_line(capsys)
    # an APTOS train.csv as table_csv was a bare KeyError: 'path'
    pd.DataFrame({"id_code": ["000c1434d8d7"], "diagnosis": [2]}).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "aptos.yaml").write_text(f"table_csv: {tmp_path / 'train.csv'}\nout_dir: {tmp_path / 'out'}\n")
    assert training_cli.main(["--config", str(tmp_path / "aptos.yaml")]) == 2
    err = _one_error_line(capsys)
    assert "lacks column(s) ['id', 'path', 'grade']" in err and "--source aptos" in err
    assert training_cli.main(["--config", str(REPO / "configs" / "fold_example.yaml"), "--set", "epochs"]) == 2
    assert "expected KEY=VALUE" in _one_error_line(capsys)


def test_train_cli_set_typo_suggests_the_field(capsys):
    fold = str(REPO / "configs" / "fold_example.yaml")
    assert training_cli.main(["--config", fold, "--set", "epoch=5", "--set", "lr=3e-4"]) == 2
    assert _one_error_line(capsys).endswith("unknown TrainConfig field(s) 'epoch' (did you mean 'epochs'?)")


@pytest.mark.parametrize("change,message", [
    ({"modles": []}, "unknown top-level key(s) 'modles' (did you mean 'models'?)"),
    ({"train": {"epoch": 3}}, "unknown train key(s) 'epoch' (did you mean 'epochs'?)"),
    ({"folds": {"n_fold": 3}}, "unknown folds key(s) 'n_fold' (did you mean 'n_folds'?)"),
    ({"models": [{"name": "m", "model": "efficientnet-lite0", "lrr": 1}]},
     "unknown model 'm' key(s) 'lrr' (did you mean 'lr'?)"),
    ({"preprocess": {"ben_sigm": 10}}, "unknown PreprocessConfig keys 'ben_sigm' (did you mean 'ben_sigma'?)"),
    ({"data": {"source": "idrid", "csvv": "x.csv", "images": "x"}},
     "unknown data key(s) 'csvv' (did you mean 'csv'?)"),
    ({"data": {"sources": [{"name": "a", "csv": "x.csv", "images": "x", "roel": "external"}]}},
     "unknown SourceSpec keys 'roel' (did you mean 'role'?)"),
])
def test_chain_config_typos_suggest_the_key(tmp_path, change, message):
    """Each key check of the chain YAML names the key it meant, without the list of every known key."""
    import yaml

    cfg = {"data": {"source": "idrid", "csv": "x.csv", "images": "x"},
           "models": [{"name": "m", "model": "efficientnet-lite0"}], **change}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError) as err:
        run_config.load_config(tmp_path / "c.yaml")
    assert str(err.value).endswith(message), str(err.value)


def test_run_cli_config_errors_are_one_line(tmp_path, capsys):
    assert run_cli.main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in _one_error_line(capsys)
    (tmp_path / "c.yaml").write_text("data: {source: idrid, csv: nowhere.csv, images: nowhere}\n"
                                     "models: [{name: m, model: efficientnet-lite0}]\n")
    assert run_cli.main([str(tmp_path / "c.yaml")]) == 2
    assert "nowhere.csv" in _one_error_line(capsys)


def test_preprocess_cli_usage_errors_are_one_line(tmp_path, capsys):
    from kaggle_utils.data.__main__ import main

    assert main(["--out", str(tmp_path / "c")]) == 2
    assert "give --table" in _one_error_line(capsys)
    assert main(["--source", "aptos", "--csv", str(tmp_path / "none.csv"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "c")]) == 2
    assert "none.csv" in _one_error_line(capsys)
    assert main(["--table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "c")]) == 2
    assert "not found" in _one_error_line(capsys)


def _fake_run(folder: Path) -> Path:
    (folder / "fold0").mkdir(parents=True)
    (folder / "fold0" / "best.pt").write_bytes(b"x")
    return folder


def test_bare_build_kernel_uses_the_latest_chain_or_lists_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs, msg = kernel_cli.latest_chain_runs()
    assert runs == [] and msg.startswith("error: no run folders given and none found under outputs/")
    loose = _fake_run(tmp_path / "outputs" / "mine" / "lite0")
    runs, msg = kernel_cli.latest_chain_runs()
    assert runs == [] and "run folders found:\n  outputs/mine/lite0\n" in msg
    _fake_run(tmp_path / "outputs" / "old" / "runs" / "b0")
    (tmp_path / "outputs" / "old" / "run_log.json").write_text("{}")
    _fake_run(tmp_path / "outputs" / "demo" / "runs" / "lite0")
    _fake_run(tmp_path / "outputs" / "demo" / "runs_round1" / "lite0")
    (tmp_path / "outputs" / "demo" / "runs" / "empty").mkdir()
    log = tmp_path / "outputs" / "demo" / "run_log.json"
    log.write_text("{}")
    import os

    os.utime(tmp_path / "outputs" / "old" / "run_log.json", (1, 1))
    runs, msg = kernel_cli.latest_chain_runs()
    assert runs == [Path("outputs/demo/runs_round1/lite0")]  # the last pseudo round: what the submission used
    assert msg.startswith("no run folders given: using the runs of the most recent chain, outputs/demo")
    assert loose.is_dir()


def test_bare_build_kernel_script_says_what_it_uses_and_warns_about_owner(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert subprocess.run([sys.executable, str(REPO / "build_kernel.py")], capture_output=True, text=True,
                          cwd=tmp_path).returncode == 2  # the script itself, with no arguments at all
    _fake_run(tmp_path / "outputs" / "demo" / "runs" / "lite0")
    (tmp_path / "outputs" / "demo" / "run_log.json").write_text("{}")
    seen = {}
    monkeypatch.setattr(kernel_cli, "build", lambda spec: seen.update(spec=spec))
    assert kernel_cli.main([]) == 0
    out, err = capsys.readouterr()
    assert "using the runs of the most recent chain, outputs/demo" in out
    assert "warning: no --owner: assumed Kaggle user 'kaggleutils'" in err and "licence CC0-1.0" in err
    assert seen["spec"].runs == [Path("outputs/demo/runs/lite0")] and seen["spec"].owner == "kaggleutils"
    assert kernel_cli.main(["outputs/demo/runs/lite0", "--owner", "me", "--license", "CC-BY-SA-4.0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (seen["spec"].owner, seen["spec"].license) == ("me", "CC-BY-SA-4.0")


def _notebook_defaults(name: str) -> dict:
    nb = jupytext.read(REPO / "notebooks" / f"{name}.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    scope: dict = {}
    exec(cell.source, scope)  # noqa: S102 - our own notebook's parameters cell: plain assignments
    return scope


def test_pretrained_default_agrees_between_notebook_fold_yaml_and_chain():
    """A hand-written fold YAML used to train from random weights (TrainConfig said False, the notebook True)."""
    assert training_config.TrainConfig().pretrained is True
    assert _notebook_defaults("train")["pretrained"] is True
    example = training_config.TrainConfig.from_file(REPO / "configs" / "fold_example.yaml")
    assert example.pretrained is True
    demo = run_config.load_config(REPO / "configs" / "demo.yaml")
    assert all(m.get("pretrained", True) is True for m in demo["models"])


@pytest.mark.parametrize("field", ["model", "head", "pool", "size"])
def test_train_notebook_defaults_match_trainconfig(field):
    assert _notebook_defaults("train")[field] == getattr(training_config.TrainConfig(), field)
