"""Issue 25, every GPU does work: the chain runs independent steps side by side, one per device slot
(``devices:``). The fast tests stub the notebooks (which steps wait for which, the logs, run_log.json, Ctrl-C,
a failed step, the config checks); the slow one runs the real notebooks on two CPU slots against a one-slot
reference with the same threads per fold: the same epoch metrics and submission after Ctrl-C and kill -9
mid-training and a rerun, and a second rerun that skips every step."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_no_stale import _layout
from train_helpers import TINY_MODEL, register_tiny_model, resized_table

from kaggle_utils.run import chain
from kaggle_utils.run.__main__ import main as run_main
from kaggle_utils.run.config import load_config
from kaggle_utils.run.slots import Slot, SlotStream, cpu_cores, resolve_slots
from kaggle_utils.training.config import TrainConfig
from kaggle_utils.training.distributed import DistInfo
from kaggle_utils.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


# ------------------------------------------------------------------------------------- devices -> slots


def test_devices_become_slots(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_slots("auto", gpus=0) == [Slot(0)]  # no GPU: the sequential chain, nothing overridden
    assert resolve_slots(1, gpus=2) == [Slot(0)]
    assert resolve_slots("auto", gpus=2) == [Slot(0, "cuda:0"), Slot(1, "cuda:1")]
    assert resolve_slots(2, gpus=0, cores=4) == [Slot(0, None, 2), Slot(1, None, 2)]
    assert resolve_slots(3, gpus=0, cores=2) == [Slot(k, None, 1) for k in range(3)]
    assert Slot(1, None, 2).env()["OMP_NUM_THREADS"] == "2" and Slot(1, "cuda:1").env() == {}
    assert Slot(1, "cuda:1").overrides() == {"device": "cuda:1"}
    with pytest.raises(ValueError, match="devices: 3, but this machine has 2 CUDA GPU"):
        resolve_slots(3, gpus=2)


def test_slots_and_torchrun_do_not_mix(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun .*WORLD_SIZE=2.*devices: 1"):
        resolve_slots(2, gpus=2)
    assert resolve_slots("auto", gpus=2) == [Slot(0)]  # DDP takes the GPUs; one step at a time
    with pytest.raises(ValueError, match="torchrun started 2 processes"):  # and a fold cannot pin one GPU
        Trainer(TrainConfig(device="cuda:1", model=TINY_MODEL), dist_info=DistInfo(0, 2, 0))


@pytest.mark.parametrize("value", [0, "two", True, 1.5])
def test_a_bad_devices_value_is_one_config_error(tmp_path, value):
    cfg = yaml.safe_load(_layout(tmp_path, SAMPLE).read_text())
    with pytest.raises(ValueError, match=f"devices: {value!r}; expected auto or a positive integer"):
        load_config({**cfg, "devices": value})


# ------------------------------------------------------------------------------------- dependencies


def _two_stage_config(root: Path) -> dict:
    """Model ``a`` pre-trains on an external source (its folds wait for stage 1), model ``b`` does not."""
    cfg = yaml.safe_load(_layout(root, SAMPLE).read_text())
    cfg["data"] = {"sources": [
        {"name": "idrid", "reader": "idrid", "csv": str(root / "train.csv"), "images": str(SAMPLE / "images"),
         "role": "competition"},
        {"name": "ext", "reader": "idrid", "csv": str(SAMPLE / "labels.csv"), "images": str(SAMPLE / "images"),
         "role": "external"}]}
    cfg["models"] = [{"name": "a", "model": "efficientnet-lite0", "pretrained": False, "pretrain": True},
                     {"name": "b", "model": "efficientnet-lite0", "pretrained": False}]
    return cfg


def test_training_steps_wait_only_for_what_they_read(tmp_path):
    cfg = _two_stage_config(tmp_path) | {"pseudo": {"rounds": 1}}
    after = chain.dependencies(chain.all_steps(load_config(cfg), tmp_path))
    assert after["pretrain:a"] == ["preprocess:cache0"]
    assert after["train:a:fold1"] == ["preprocess:cache0", "pretrain:a"]  # not fold 0, not model b
    assert after["train:b:fold0"] == ["preprocess:cache0"]
    assert after["infer"] == ["preprocess:cache0", "pretrain:a", "train:a:fold0", "train:a:fold1",
                              "train:b:fold0", "train:b:fold1"]
    assert after["train:b:fold1:r1"] == ["preprocess:cache0", "infer", "blend", "pseudo:r1"]
    assert after["train:a:fold0:r1"][-1] == "pretrain:a"


# --------------------------------------------------------------------------------- stubbed notebooks


@pytest.fixture
def stubbed(monkeypatch):
    """The notebooks replaced by a recorder that sleeps (training 0.3 s, ``slow`` steps longer); ``fail`` maps
    a step to the exception it raises."""
    calls: dict[str, dict] = {}
    fail: dict[str, BaseException] = {}
    slow: dict[str, float] = {}

    def execute(self, step, params, out_nb, timeout):
        start = time.time()
        if step.name in fail:
            raise fail[step.name]
        time.sleep(slow.get(step.name, 0.3 if step.notebook == "train" else 0.0))
        if step.notebook == "blend":
            Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(params["out_dir"]) / "submission.csv").write_text("made by this run\n")
        calls[step.name] = {"start": start, "end": time.time(), "threads": params.get("threads"),
                            "device": params.get("device"), "thread": threading.current_thread().name}

    monkeypatch.setattr(chain.Runner, "_execute", execute)
    return calls, fail, slow


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_two_slots_train_side_by_side_after_what_they_need(tmp_path, stubbed, capsys):
    calls, _, slow = stubbed
    cfg = _two_stage_config(tmp_path) | {"devices": 2}
    slow["pretrain:a"] = 1.5
    log = chain.run_chain(cfg)
    out = capsys.readouterr().out
    threads = max(1, cpu_cores() // 2)
    assert f"[run] 2 slots (cpu, {threads} thread" in out
    # b's folds need no stage 1: they train while a pre-trains; a's folds wait for it, infer for every fold
    assert _overlap(calls["pretrain:a"], calls["train:b:fold0"])
    assert calls["train:a:fold0"]["start"] >= calls["pretrain:a"]["end"]
    assert calls["train:a:fold1"]["start"] >= calls["pretrain:a"]["end"]
    assert _overlap(calls["train:a:fold0"], calls["train:a:fold1"])
    training = [c for name, c in calls.items() if name.startswith(("train:", "pretrain:"))]
    assert min(c["start"] for c in training) >= calls["preprocess:cache0"]["end"]
    assert calls["infer"]["start"] >= max(c["end"] for c in training)
    assert {c["thread"] for c in training} == {"slot0", "slot1"}
    assert all(c["threads"] == threads and c["device"] is None for c in training)  # CPU: a share of the cores
    assert calls["infer"]["threads"] is None  # runs alone, with every core
    # every start and finish line names its slot; run_log.json says which slot ran what and when
    assert f"[run] [slot 0: cpu, {threads} thread" in out and f"[run] [slot 1: cpu, {threads} thread" in out
    assert "train:b:fold0 finished in" in out
    steps = log["steps"]
    assert {steps[n]["slot"] for n in ("pretrain:a", "train:b:fold0")} == {0, 1}
    assert all(s["status"] == "ok" and s["started"] <= s["finished"] for s in steps.values())

    n_calls = len(calls)
    for devices in (2, 1):  # a rerun skips every step, whatever the number of slots
        assert chain.run_chain(cfg | {"devices": devices})["steps"] == steps
        skipped = [ln for ln in capsys.readouterr().out.splitlines() if ln.endswith(": done earlier, skipped")]
        assert len(skipped) == len(steps) == n_calls == len(calls)


def test_ctrl_c_in_one_slot_stops_the_chain_and_a_rerun_resumes(tmp_path, stubbed, capsys):
    """A stub cannot be killed: the other slot's step ends normally while the chain stops, and counts as done
    (the real kernels are killed: the slow test)."""
    calls, fail, slow = stubbed
    cfg_path = _layout(tmp_path, SAMPLE)
    cfg_path.write_text(yaml.safe_dump(yaml.safe_load(cfg_path.read_text()) | {"devices": 2}))
    fail["train:lite0:fold1"] = KeyboardInterrupt()  # what the scheduler sees of a Ctrl-C in a slot
    slow["train:lite0:fold0"] = 1.0
    assert run_main([str(cfg_path)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("[run] interrupted during step 'train:lite0:fold1'; rerun the same command to resume "
                   "(finished steps are skipped, training resumes from its last checkpoint)")
    log = chain.io.read_json(tmp_path / "work" / chain.LOG_FILE)
    assert [log["steps"][f"train:lite0:fold{k}"]["status"] for k in (0, 1)] == ["ok", "interrupted"]
    assert "infer" not in calls
    del fail["train:lite0:fold1"]
    calls.clear()
    assert run_main([str(cfg_path)]) == 0
    assert list(calls) == ["train:lite0:fold1", "infer", "blend"]


def test_a_failed_step_lets_the_other_slot_finish_then_stops(tmp_path, stubbed, capsys):
    calls, fail, slow = stubbed
    cfg_path = _layout(tmp_path, SAMPLE)
    cfg_path.write_text(yaml.safe_dump(yaml.safe_load(cfg_path.read_text()) | {"devices": 2}))
    fail["train:lite0:fold0"] = ValueError("no rows")
    slow["train:lite0:fold1"] = 1.0
    assert run_main([str(cfg_path)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == "error: step 'train:lite0:fold0' failed: ValueError: no rows"
    assert "train:lite0:fold0 failed; waiting for train:lite0:fold1 to finish" in out
    log = chain.io.read_json(tmp_path / "work" / chain.LOG_FILE)
    assert log["steps"]["train:lite0:fold0"]["status"] == "failed"
    assert log["steps"]["train:lite0:fold1"]["status"] == "ok"  # its work counts: a rerun skips it
    assert "infer" not in calls


def test_slot_stream_prefixes_whole_lines_and_keeps_a_bars_last_frame():
    lines: list[str] = []
    stream = SlotStream("[slot 1] ", lines.append)
    stream.write("epoch 1/2 tr")
    stream.write("ain_loss 0.5\n\r 10%|#  \r 50%|#####  \r100%|##########|\n\n")
    stream.write("\r 30%|###")
    stream.write("\r          \rdone")
    stream.close()
    assert lines == ["[slot 1] epoch 1/2 train_loss 0.5", "[slot 1] 100%|##########|", "[slot 1] done"]


def test_trainer_says_its_device_and_takes_its_threads(shared_data, tmp_path, capsys):
    register_tiny_model()
    table = resized_table(shared_data, tmp_path / "img", n=8, size=64, n_folds=2)
    before = torch.get_num_threads()
    try:
        Trainer(TrainConfig(out_dir=str(tmp_path / "run"), model=TINY_MODEL, pretrained=False, size=64, epochs=1,
                            max_steps_per_epoch=1, num_workers=0, progress=False, threads=1, device="cpu"),
                table).fit()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "device: cpu (1 thread)" in capsys.readouterr().err
    assert "threads" in TrainConfig.RUNTIME_FIELDS  # another slot count resumes the same run


# ------------------------------------------------------------------------- the real notebooks, 2 CPU slots


def _real_config(root: Path, work: str, devices: int, threads: int | None = None) -> Path:
    """The tiny chain of test_no_stale with 2 epochs and a lighter report (the submission does not depend on
    it) in ``root/work``; ``threads`` for the one-slot reference."""
    path = _layout(root, SAMPLE)
    cfg = yaml.safe_load(path.read_text()) | {"devices": devices, "workdir": str(root / work)}
    cfg["train"] |= {"epochs": 2} | ({"threads": threads} if threads else {})
    cfg["blend"] |= {"prior_boot": 20, "shakeup_sims": 20}
    out = root / f"{work}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory) -> Path:
    """The sequential chain with each fold on a slot's share of the cores: what two slots must reproduce."""
    root = tmp_path_factory.mktemp("chains")
    assert run_main([str(_real_config(root, "one_slot", 1, max(1, cpu_cores() // 2)))]) == 1  # planted bad rows
    return root / "one_slot"


def _preprocessed_from(src: Path, dst: Path) -> None:
    """``dst`` starts where ``src`` was after preprocessing (the same inputs; keys are workdir-relative)."""
    for name in ("data", "cache0"):
        shutil.copytree(src / name, dst / name)
    step = chain.io.read_json(src / chain.LOG_FILE)["steps"]["preprocess:cache0"]
    chain.io.write_json(dst / chain.LOG_FILE, {"steps": {"preprocess:cache0": step}})


def _kernels_of(pid: int) -> set[int]:
    """Notebook kernels the chain ``pid`` started (jupyter puts each in its own session: they carry our pid)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"JPY_PARENT_PID={pid}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _start_and_wait_for_both_slots(cfg: Path) -> tuple[subprocess.Popen, set[int]]:
    """The chain in a subprocess, returned once both slots' kernels train (each printed its device)."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kaggle_utils.run", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    training, deadline = set(), time.time() + 180
    for line in proc.stdout:
        if line.startswith(("[slot 0] device:", "[slot 1] device:")):
            training.add(line[:8])
        if len(training) == 2 or time.time() > deadline:
            break
    assert len(training) == 2, "both slots should be training"
    return proc, _kernels_of(proc.pid)


def _gone(pids: set[int], within: float = 15.0) -> bool:
    deadline = time.time() + within
    while _alive(pids) and time.time() < deadline:
        time.sleep(0.2)
    return not _alive(pids)


@pytest.mark.slow
def test_two_cpu_slots_match_one_slot_through_ctrl_c_and_kill_9(one_slot, capsys):
    root = one_slot.parent
    cfg, work = _real_config(root, "two_slots", 2), root / "two_slots"
    _preprocessed_from(one_slot, work)

    proc, kernels = _start_and_wait_for_both_slots(cfg)  # Ctrl-C: one line naming both, every kernel killed
    assert len(kernels) == 2
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("[run] interrupted during steps 'train:lite0:fold0', 'train:lite0:fold1'; rerun")
    assert _gone(kernels), "a slot's kernel outlived Ctrl-C"

    proc, kernels = _start_and_wait_for_both_slots(cfg)  # kill -9: the kernels notice and exit
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _gone(kernels), "a slot's kernel outlived kill -9 of the chain"

    assert run_main([str(cfg)]) == 1  # the rerun finishes the chain (exit 1: the planted bad row and image)
    captured = capsys.readouterr()
    out = captured.out
    assert "[run] preprocess:cache0: done earlier, skipped" in out
    # the folds kill -9 left unfinished rerun, their kernels' output prefixed by slot (which epochs are left
    # depends on when kill -9 came: a fold past its last epoch only reloads and reports; on an idle machine
    # both 2-step folds may even have finished and been logged before the kill, and are skipped)
    reran = [k for k in (0, 1) if f"[run] train:lite0:fold{k}: done earlier, skipped" not in out]
    assert sum(f"\n[slot {s}] " in out for s in (0, 1)) >= len(reran), out
    log = chain.io.read_json(work / chain.LOG_FILE)["steps"]
    folds = [log[f"train:lite0:fold{k}"] for k in (0, 1)]
    assert {f["slot"] for f in folds} == {0, 1}
    assert _overlap(*({"start": f["started"], "end": f["finished"]} for f in folds))
    for k in (0, 1):  # the same epochs as one slot with the same threads per fold
        mine = pd.read_csv(work / "runs" / "lite0" / f"fold{k}" / "metrics.csv")
        ref = pd.read_csv(one_slot / "runs" / "lite0" / f"fold{k}" / "metrics.csv")
        cols = ["epoch", "train_loss", "val_loss", "val_qwk", "lr"]
        assert len(mine) == 2 and (mine[cols] - ref[cols]).abs().to_numpy().max() <= 1e-4, (mine, ref)
    assert (work / "blend" / "submission.csv").is_file(), out + captured.err
    assert (work / "blend" / "submission.csv").read_bytes() == (one_slot / "blend" / "submission.csv").read_bytes()

    before = chain.io.read_json(work / chain.LOG_FILE)["steps"]
    assert run_main([str(cfg)]) == 1  # finished: every step skipped, the log untouched
    skipped = [ln for ln in capsys.readouterr().out.splitlines() if ln.endswith(": done earlier, skipped")]
    assert len(skipped) == 5
    assert chain.io.read_json(work / chain.LOG_FILE)["steps"] == before
