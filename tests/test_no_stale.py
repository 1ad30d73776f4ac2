"""Issue 17's reproductions on the chain, each failing on the old code: a test extension that fits no image,
a step that fails (its exception on the console, no older submission left in place), test images replaced
between runs (infer and blend rerun, nothing else), skipped label rows and failed test images in the summary
and the exit status, and Ctrl-C. Real IDRiD photographs; the fast tests run the chain's real plan with the
notebooks stubbed, one slow test runs the real notebooks end to end."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import papermill as pm
import pytest
import yaml
from papermill.exceptions import PapermillExecutionError

from kaggle_utils.data import sources
from kaggle_utils.data.labels import SourceError
from kaggle_utils.run import chain
from kaggle_utils.run.__main__ import main as run_main

REPO = Path(__file__).resolve().parents[1]


def _layout(root: Path, sample_dir: Path, ext: str = ".jpg") -> Path:
    """train.csv (54 sample photographs + one row with grade 5) and test.csv + test_images (6 more, plus a
    corrupt file); returns the config's path."""
    labels = pd.read_csv(sample_dir / "labels.csv")
    ids = labels["id_code"][::10].tolist()
    train = labels[~labels["id_code"].isin(ids)]
    bad = pd.DataFrame({"id_code": [str(train["id_code"].iloc[0])], "diagnosis": [5]})
    pd.concat([train, bad]).to_csv(root / "train.csv", index=False)
    (root / "test_images").mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(sample_dir / "images" / f"{i}.jpg", root / "test_images" / f"{i}{ext}")
    (root / "test_images" / f"corrupt{ext}").write_bytes(b"not an image at all")
    pd.DataFrame({"id_code": [*ids, "corrupt"]}).to_csv(root / "test.csv", index=False)
    cfg = {"workdir": str(root / "work"), "budget_hours": 1, "workers": 1,
           "data": {"source": "idrid", "csv": str(root / "train.csv"), "images": str(sample_dir / "images")},
           "preprocess": {"size": 96}, "folds": {"n_folds": 2, "seed": 0},
           "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "max_steps_per_epoch": 2, "progress": False},
           "models": [{"name": "lite0", "model": "efficientnet-lite0", "pretrained": False, "size": 64}],
           "test": {"csv": str(root / "test.csv"), "images": str(root / "test_images"), "ext": ".jpg"},
           "infer": {"tta": "none", "batch_size": 4, "workers": 1}, "blend": {"gradcam_per_grade": 0}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root / "cfg.yaml"


def _to_jpeg(root: Path) -> None:
    for p in (root / "test_images").glob("*.jpg"):
        p.rename(p.with_suffix(".jpeg"))


@pytest.fixture
def stubbed(monkeypatch):
    """The notebooks replaced by a recorder; ``fail`` maps a step name to the exception it raises."""
    calls: list[str] = []
    fail: dict[str, BaseException] = {}

    def execute(self, step, params, out_nb, timeout):
        calls.append(step.name)
        if step.name in fail:
            raise fail[step.name]
        if step.notebook == "blend":  # what the blend notebook leaves
            Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(params["out_dir"]) / "submission.csv").write_text("made by this run\n")

    monkeypatch.setattr(chain.Runner, "_execute", execute)
    return calls, fail


# ------------------------------------------------------------------------------------------ extension


def test_extension_that_fits_no_test_image_is_one_error_naming_the_one_found(tmp_path, sample_dir):
    _layout(tmp_path, sample_dir)
    _to_jpeg(tmp_path)
    with pytest.raises(SourceError, match=r"none of the 7 test ids has a \.jpg file.*7 have a \.jpeg file.*'\.jpeg'"):
        sources.test_table(tmp_path / "test.csv", tmp_path / "test_images", ext=".jpg")
    assert len(sources.test_table(tmp_path / "test.csv", tmp_path / "test_images", ext=".jpeg")) == 7
    (tmp_path / "empty").mkdir()  # nothing there at all: images fail one by one, as before
    assert len(sources.test_table(tmp_path / "test.csv", tmp_path / "empty", ext=".jpg")) == 7


def test_plan_warns_when_the_extension_fits_no_test_image(tmp_path, sample_dir, capsys):
    cfg = _layout(tmp_path, sample_dir)
    assert run_main([str(cfg), "--plan"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    _to_jpeg(tmp_path)
    assert run_main([str(cfg), "--plan"]) == 0
    warning = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("WARNING")]
    assert len(warning) == 1 and "'.jpeg'" in warning[0] and "none of the 7 test ids has a .jpg file" in warning[0]


# ------------------------------------------------------------------------------------- failed steps


def _notebook_error(ename: str, evalue: str) -> PapermillExecutionError:
    tb = ["\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
          f"\x1b[0;31m{ename}\x1b[0m                                Traceback (most recent call last)",
          "Cell \x1b[0;32mIn[3], line 12\x1b[0m\n\x1b[1;32m---> 12\x1b[0m result = ensemble.blend_runs(...)",
          f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
    return PapermillExecutionError(3, 3, "result = ensemble.blend_runs(...)", ename, evalue, tb)


def test_failed_step_prints_its_exception_and_leaves_no_older_submission(tmp_path, sample_dir, stubbed, capsys):
    calls, fail = stubbed
    cfg = _layout(tmp_path, sample_dir)
    run_main([str(cfg)])
    submission = tmp_path / "work" / "blend" / "submission.csv"
    assert submission.read_text() == "made by this run\n"
    capsys.readouterr()

    def add_test_id(name: str) -> None:  # changes infer's inputs: infer and blend must rerun
        (tmp_path / "test.csv").write_text((tmp_path / "test.csv").read_text() + f"{name}\n")

    add_test_id("new_1")
    fail["infer"] = _notebook_error("SourceError", "test images: none of the 8 test ids has a .jpg file")
    assert run_main([str(cfg)]) == 1
    assert calls[-1] == "infer" and not submission.exists()  # blend never ran, and nothing stale waits for it
    del fail["infer"]
    assert run_main([str(cfg)]) == 0 and submission.is_file()
    capsys.readouterr()

    add_test_id("new_2")
    fail["blend"] = _notebook_error("ValueError", "preds is empty")
    assert run_main([str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: step 'blend' failed: ValueError: preds is empty"  # was cut at ':'
    assert "---> 12" in err and "\x1b[" not in err and "blend.ipynb" in err
    assert calls[-2:] == ["infer", "blend"] and not submission.exists()  # was: last run's, looking current


# ----------------------------------------------------------------------------- input files in the keys


def test_changed_added_or_removed_test_image_reruns_infer_and_blend_only(tmp_path, sample_dir, stubbed):
    calls, _ = stubbed
    cfg = _layout(tmp_path, sample_dir)

    def rerun() -> list[str]:
        before = len(calls)
        assert run_main([str(cfg)]) == 0  # the stub writes no failed-image or skipped-row listing
        return calls[before:]

    assert rerun() == ["preprocess:cache0", "train:lite0:fold0", "train:lite0:fold1", "infer", "blend"]
    assert rerun() == []
    img = next((tmp_path / "test_images").glob("IDRiD*.jpg"))
    cv2.imwrite(str(img), cv2.flip(cv2.imread(str(img)), 1))  # replaced in place, same name
    assert rerun() == ["infer", "blend"]  # was: "infer: done earlier, skipped"
    shutil.copy(img, tmp_path / "test_images" / "added.jpg")
    assert rerun() == ["infer", "blend"]
    (tmp_path / "test_images" / "added.jpg").unlink()
    assert rerun() == ["infer", "blend"]
    labels = pd.read_csv(tmp_path / "train.csv")
    labels.iloc[:-2].to_csv(tmp_path / "train.csv", index=False)  # a label file changed: everything reruns
    assert rerun() == ["preprocess:cache0", "train:lite0:fold0", "train:lite0:fold1", "infer", "blend"]


def test_moved_workdir_keeps_its_input_keys(tmp_path, sample_dir):
    cfg = yaml.safe_load(_layout(tmp_path, sample_dir).read_text())
    cfg.pop("workdir")
    keys = [s.key(tmp_path / "a") for s in chain.all_steps(cfg, tmp_path / "a")]
    assert keys == [s.key(tmp_path / "b") for s in chain.all_steps(cfg, tmp_path / "b")]


# ------------------------------------------------------------------------------ summary and exit status


def test_summary_and_exit_status_count_skipped_rows_and_failed_images(tmp_path, sample_dir, stubbed, capsys):
    calls, _ = stubbed
    cfg = _layout(tmp_path, sample_dir)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    pd.DataFrame({"source": ["idrid"], "row": [56], "id": ["IDRiD_001"], "kind": ["bad_grade"],
                  "reason": ["grade 5 is not 0-4"]}).to_csv(work / "data" / "skipped_rows.csv", index=False)
    (work / "preds").mkdir()
    pd.DataFrame({"id": ["corrupt"], "reason": ["cannot decode"]}).to_csv(work / "preds" / "failed_images.csv",
                                                                          index=False)
    assert run_main([str(cfg)]) == 1  # was 0, with the skipped row mentioned nowhere
    out, err = capsys.readouterr()
    assert "[run] training data: 1 label row(s) skipped (listed in" in out
    assert "[run] test images: 1 unreadable (fallback grade) (corrupt: cannot decode)" in out
    assert "exit status 1: 2 skipped row(s) or failed image(s)" in err


# ------------------------------------------------------------------------------------------- Ctrl-C


def test_interrupt_is_one_line_exit_130_and_a_rerun_resumes(tmp_path, sample_dir, stubbed, capsys):
    calls, fail = stubbed
    cfg = _layout(tmp_path, sample_dir)
    fail["train:lite0:fold1"] = KeyboardInterrupt()
    assert run_main([str(cfg)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("[run] interrupted during step 'train:lite0:fold1'; rerun the same command to resume "
                   "(finished steps are skipped, training resumes from its last checkpoint)")
    log = chain.io.read_json(tmp_path / "work" / chain.LOG_FILE)
    assert log["steps"]["train:lite0:fold1"]["status"] == "interrupted"
    del fail["train:lite0:fold1"]
    before = len(calls)
    assert run_main([str(cfg)]) == 0
    assert calls[before:] == ["train:lite0:fold1", "infer", "blend"]


@pytest.mark.slow
def test_ctrl_c_on_the_real_chain_prints_one_line_not_a_traceback(tmp_path, sample_dir):
    cfg = _layout(tmp_path, sample_dir)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    # a test run started in the background of a script inherits SIGINT ignored (no KeyboardInterrupt at all);
    # a terminal's Ctrl-C reaches a chain with the default handler, so give the child that
    proc = subprocess.Popen([sys.executable, "-m", "kaggle_utils.run", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until a training notebook is running, then Ctrl-C the whole group
        if line.startswith("[run] train:lite0:fold0") or time.time() > deadline:
            break
    time.sleep(4)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]  # no kernel warnings either
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("[run] interrupted during step 'train:lite0:fold0'; rerun the same command")


# --------------------------------------------------------------------------- the real notebooks, end to end


@pytest.mark.slow
def test_real_chain_jpeg_over_png_stops_with_one_line_and_no_submission(tmp_path, sample_dir, capsys):
    """The issue's case on the real notebooks: a first run (grade-5 row and a corrupt test image: exit 1,
    both counted), test images replaced (infer and blend rerun, training not), then every test image turned
    into .jpeg while the config says .jpg (plan warns, the run stops with one clear line, no submission)."""
    cfg = _layout(tmp_path, sample_dir)
    work = tmp_path / "work"
    assert run_main([str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "training data: 1 label row(s) skipped" in out and "test images: 1 unreadable" in out
    assert len(pd.read_csv(work / "blend" / "submission.csv")) == 7

    img = next((tmp_path / "test_images").glob("IDRiD*.jpg"))
    cv2.imwrite(str(img), cv2.flip(cv2.imread(str(img)), 1))
    assert run_main([str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "[run] train:lite0:fold1: done earlier, skipped" in out and "[run] infer (" in out
    assert "[run] blend (" in out

    _to_jpeg(tmp_path)
    assert run_main([str(cfg)]) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("error: step 'infer' failed: SourceError: test images: none of the 7 test ids has a "
                            ".jpg file") and "'.jpeg'" in first
    assert not (work / "blend" / "submission.csv").exists()


def test_blend_notebook_by_hand_removes_an_older_submission_before_it_fails(tmp_path):
    out = tmp_path / "blend"
    out.mkdir()
    (out / "submission.csv").write_text("id_code,diagnosis\nold,0\n")
    (tmp_path / "test.csv").write_text("id\nx\n")
    with pytest.raises(PapermillExecutionError):
        pm.execute_notebook(str(REPO / "notebooks" / "blend.ipynb"), str(tmp_path / "blend.ipynb"),
                            parameters={"run_dirs": [str(tmp_path / "runs" / "none")],
                                        "preds_dir": str(tmp_path / "preds"), "test_csv": str(tmp_path / "test.csv"),
                                        "out_dir": str(out), "cache_dir": str(tmp_path)},
                            progress_bar=False, kernel_name="python3", cwd=str(REPO))
    assert not (out / "submission.csv").exists()
