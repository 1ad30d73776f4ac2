"""cache.py and the preprocess CLI on real photographs plus broken files: failures, resume, kill -9, config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kaggle_utils.data import __main__ as data_cli
from kaggle_utils.data import cache, preprocess
from kaggle_utils.io import read_json

CFG = preprocess.PreprocessConfig(size=96, circle=True)
BAD = {  # id -> words the failure reason must contain
    "truncated": "truncated JPEG",
    "empty": "zero-byte",
    "textfile": "not an image",
    "missing": "file not found",
}


@pytest.fixture()
def table(tmp_path: Path, sample_dir: Path, raw_dir: Path) -> pd.DataFrame:
    """Eight real photographs (sample JPEGs, a 4288x2848 original, an RGBA TIFF) and four broken files."""
    src = tmp_path / "src"
    src.mkdir()
    labels = pd.read_csv(sample_dir / "labels.csv", dtype={"id_code": str}).head(6)
    rows = []
    for r in labels.itertuples():
        shutil.copyfile(sample_dir / "images" / f"{r.id_code}.jpg", src / f"{r.id_code}.jpg")
        rows.append((r.id_code, src / f"{r.id_code}.jpg", r.diagnosis))
    for name, grade in (("idrid_IDRiD_021.jpg", 1), ("drive_21_training.tif", None)):
        shutil.copyfile(raw_dir / name, src / name)
        rows.append((Path(name).stem, src / name, grade))
    data = (raw_dir / "idrid_IDRiD_079.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "empty.jpg").write_bytes(b"")
    (src / "textfile.png").write_text("this is not a PNG\n")
    rows += [("truncated", src / "truncated.jpg", 1), ("empty", src / "empty.jpg", 0)]
    rows += [("textfile", src / "textfile.png", 2), ("missing", src / "missing.jpg", 3)]
    df = pd.DataFrame(rows, columns=["id", "path", "grade"])
    df["path"] = df["path"].astype(str)
    df["grade"] = df["grade"].astype("Int64")
    df["source"] = "test"
    df["eye"] = "left"  # extra table columns travel into the manifest
    return df


def n_good(table: pd.DataFrame) -> int:
    return len(table) - len(BAD)


def check_complete(table: pd.DataFrame, out: Path, manifest: pd.DataFrame) -> None:
    assert list(manifest["id"]) == list(table["id"])
    ok = manifest[manifest["status"] == "ok"]
    assert set(ok["id"]) == set(table["id"]) - set(BAD)
    for row in ok.itertuples():
        img = cv2.imread(str(out / row.cache_path), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (CFG.size, CFG.size, 3), row.id
    failed = manifest[manifest["status"] == "failed"].set_index("id")
    assert set(failed.index) == set(BAD)
    for rid, words in BAD.items():
        assert words in failed.loc[rid, "reason"], (rid, failed.loc[rid, "reason"])
        assert failed.loc[rid, "cache_path"] == ""
    assert not list(out.rglob("*.tmp"))


def test_build_cache_parallel_with_broken_files(table: pd.DataFrame, tmp_path: Path) -> None:
    # OpenCV's thread pool busy in this process first: a fork()ed worker would inherit it without its threads
    # and deadlock in cv2.setNumThreads; workers must come from a clean process.
    cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (0, 0), 5)
    out = tmp_path / "cache"
    manifest = cache.build_cache(table, out, CFG, workers=2, progress=False)
    check_complete(table, out, manifest)
    assert manifest.attrs["summary"] == {
        "ok": n_good(table),
        "failed": len(BAD),
        "reused": 0,
        "processed": len(table),
        "temp_files_swept": 0,
    }
    assert list(manifest.columns[:7]) == cache.FIRST_COLUMNS and "eye" in manifest.columns
    on_disk = pd.read_csv(out / "manifest.csv", dtype={"id": str})
    assert list(on_disk["id"]) == list(manifest["id"]) and list(on_disk["status"]) == list(manifest["status"])
    assert preprocess.PreprocessConfig.from_dict(read_json(out / "preprocess.json")) == CFG
    loaded = cache.load_cache(out)
    assert len(loaded) == n_good(table) and str(loaded["grade"].dtype) == "Int64"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in loaded["cache_path"])
    assert loaded.set_index("id").loc["idrid_IDRiD_021", "path"] == table["path"][6]
    # the cached pixels are what preprocess_image gives (PNG is lossless)
    first = loaded.iloc[0]
    cached = cv2.cvtColor(cv2.imread(first["cache_path"]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(cached, preprocess.preprocess_image(first["path"], CFG))
    line = cache.summary_line(manifest, out)
    assert f"{n_good(table)} ok / {len(BAD)} failed" in line and "manifest.csv" in line


def test_rerun_does_only_what_is_missing(table: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cache"
    first = cache.build_cache(table, out, CFG, workers=1, progress=False)
    files = {r.id: out / r.cache_path for r in first.itertuples() if r.status == "ok"}
    stamps = {rid: f.stat().st_mtime_ns for rid, f in files.items()}
    files["idrid_IDRiD_021"].unlink()  # lost output
    stale = out / "images" / ".idrid_IDRiD_021.png.abc123.tmp"  # what kill -9 inside atomic_write leaves
    stale.write_bytes(b"half a png")

    calls: list[str] = []
    real = cache.preprocess_image

    def counting(path, cfg):
        calls.append(Path(path).name)
        return real(path, cfg)

    monkeypatch.setattr(cache, "preprocess_image", counting)
    time.sleep(0.01)
    second = cache.build_cache(table, out, CFG, workers=1, progress=False)
    check_complete(table, out, second)
    # only the lost image and the (retried) failures are processed again
    assert sorted(calls) == sorted(
        ["idrid_IDRiD_021.jpg", "truncated.jpg", "empty.jpg", "textfile.png", "missing.jpg"]
    )
    s = second.attrs["summary"]
    assert (s["reused"], s["processed"], s["temp_files_swept"]) == (n_good(table) - 1, 1 + len(BAD), 1)
    assert not stale.exists()
    for rid, stamp in stamps.items():
        if rid != "idrid_IDRiD_021":
            assert files[rid].stat().st_mtime_ns == stamp, rid

    # a manifest lost before its first checkpoint: the atomic image files alone say what is done
    (out / "manifest.csv").unlink()
    calls.clear()
    third = cache.build_cache(table, out, CFG, workers=1, progress=False)
    check_complete(table, out, third)
    assert sorted(calls) == sorted(["truncated.jpg", "empty.jpg", "textfile.png", "missing.jpg"])

    # a row whose source path changed since it was cached is redone
    moved = table.copy()
    new_path = tmp_path / "src" / "moved.jpg"
    shutil.copyfile(moved.loc[0, "path"], new_path)
    moved.loc[0, "path"] = str(new_path)
    calls.clear()
    cache.build_cache(moved, out, CFG, workers=1, progress=False)
    assert "moved.jpg" in calls


KILL_SCRIPT = """
import sys, time
from kaggle_utils import io
from kaggle_utils.data import cache
from kaggle_utils.data.preprocess import PreprocessConfig
import pandas as pd

done = 0
def stalling_write(path, data):  # the 4th image hangs half-written inside atomic_write
    global done
    with io.atomic_write(path) as fh:
        if done == 3:
            fh.write(data[: len(data) // 2])
            fh.flush()
            print("stalled", flush=True)
            time.sleep(120)
        fh.write(data)
    done += 1
cache.write_bytes = stalling_write
table = pd.read_csv(sys.argv[1], dtype={"id": str})
cache.build_cache(table, sys.argv[2], PreprocessConfig(size=96, circle=True), workers=1, progress=False)
"""


def test_survives_kill_minus_9(table: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    table_csv = tmp_path / "table.csv"
    table.to_csv(table_csv, index=False)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(table_csv), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stalled"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(list((out / "images").glob("*.png"))) == 3
    assert len(list(out.rglob("*.tmp"))) == 1  # the half-written image never got its real name
    assert not (out / "manifest.csv").exists()  # killed before the first checkpoint

    manifest = cache.build_cache(table, out, CFG, workers=1, progress=False)
    check_complete(table, out, manifest)
    s = manifest.attrs["summary"]
    assert (s["reused"], s["temp_files_swept"]) == (3, 1)
    assert s["processed"] == len(table) - 3


def test_config_change_is_refused_unless_forced(table: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    good = table[~table["id"].isin(list(BAD))].head(3)
    cache.build_cache(good, out, CFG, workers=1, progress=False)
    other = preprocess.PreprocessConfig(size=64, ben_graham=True)
    with pytest.raises(cache.CacheConfigError, match=r"size: 96 -> 64.*--force"):
        cache.build_cache(good, out, other, workers=1, progress=False)
    assert preprocess.PreprocessConfig.from_dict(read_json(out / "preprocess.json")) == CFG  # untouched
    manifest = cache.build_cache(good, out, other, workers=1, progress=False, force=True)
    assert manifest.attrs["summary"]["processed"] == 3
    assert cv2.imread(str(out / manifest["cache_path"][0])).shape == (64, 64, 3)
    assert preprocess.PreprocessConfig.from_dict(read_json(out / "preprocess.json")) == other
    # images without a config file are of unknown recipe
    (out / "preprocess.json").unlink()
    with pytest.raises(cache.CacheConfigError, match="preprocess.json is missing"):
        cache.build_cache(good, out, other, workers=1, progress=False)


def test_bad_tables_and_missing_cache(table: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(cache.CacheError, match="duplicate ids"):
        cache.build_cache(pd.concat([table, table.head(1)]), tmp_path / "c1", CFG, progress=False)
    with pytest.raises(cache.CacheError, match=r"lacks column\(s\) \['path'\]"):
        cache.build_cache(table[["id", "grade"]], tmp_path / "c2", CFG, progress=False)
    with pytest.raises(cache.CacheError, match="build the cache first"):
        cache.load_cache(tmp_path / "nothing")


def test_cli_with_table_and_source(table: pd.DataFrame, tmp_path: Path, sample_dir: Path, capsys) -> None:
    table_csv = tmp_path / "table.csv"
    table.to_csv(table_csv, index=False)
    out = tmp_path / "cli"
    args = ["--table", str(table_csv), "--out", str(out), "--size", "96", "--circle", "--no-progress"]
    assert data_cli.main([*args, "--workers", "1"]) == 1  # some images failed
    captured = capsys.readouterr()
    assert (
        f"{n_good(table)} ok / {len(BAD)} failed" in captured.out
        and str(out / "manifest.csv") in captured.out
    )
    assert "truncated JPEG" in captured.err
    assert data_cli.main([*args, "--workers", "1", "--ben"]) == 2  # config clash
    assert "--force" in capsys.readouterr().err

    pytest.importorskip("kaggle_utils.data.sources")
    out2 = tmp_path / "cli_idrid"
    argv = [
        "--source",
        "idrid",
        "--csv",
        str(sample_dir / "labels.csv"),
        "--images",
        str(sample_dir / "images"),
    ]
    assert (
        data_cli.main([*argv, "--out", str(out2), "--size", "64", "--ben", "--workers", "2", "--no-progress"]) == 0
    )
    loaded = cache.load_cache(out2)
    assert (
        len(loaded) == 60 and set(loaded["grade"]) == {0, 1, 2, 3, 4} and set(loaded["source"]) == {"idrid"}
    )


def test_unguarded_script_fails_fast_with_advice(table: pd.DataFrame, tmp_path: Path) -> None:
    """Workers re-import the calling script; without a __main__ guard that must be a clear error, not a hang."""
    table_csv = tmp_path / "table.csv"
    table.to_csv(table_csv, index=False)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import pandas as pd\nfrom kaggle_utils.data import cache\n"
        f"cache.build_cache(pd.read_csv({str(table_csv)!r}), {str(tmp_path / 'out')!r}, {{'size': 64}}, workers=2)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "CacheError" in result.stderr and "if __name__ == '__main__':" in result.stderr
