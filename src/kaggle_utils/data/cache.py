"""Preprocessed-image cache: every image of a table through one :class:`PreprocessConfig`, once.

Layout of ``out_dir``::

    preprocess.json   the PreprocessConfig (a cache never mixes recipes)
    images/<id>.png   one lossless file per ok row
    manifest.csv      id, cache_path (relative), grade, source, status ok|failed, reason, path, ...

Resumable and safe under ``kill -9``: each image is written atomically (``kaggle_utils.io``), so an image
file that exists is complete; a rerun skips those, sweeps stale temp files and retries failures. The
manifest is rewritten atomically every ``checkpoint_s`` seconds and at the end. No torch here.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
import pandas as pd
from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

from kaggle_utils.data.decode import ImageReadError
from kaggle_utils.data.preprocess import PreprocessConfig, preprocess_image
from kaggle_utils.io import read_csv, read_json, sweep_temp_files, write_bytes, write_csv, write_json

__all__ = [
    "CacheError",
    "CacheConfigError",
    "build_cache",
    "load_cache",
    "summary_line",
    "MANIFEST",
    "CONFIG",
]

MANIFEST = "manifest.csv"
CONFIG = "preprocess.json"
IMAGES = "images"
FIRST_COLUMNS = ["id", "cache_path", "grade", "source", "status", "reason", "path"]
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


class CacheError(RuntimeError):
    """A cache folder that cannot be used as asked (missing manifest, missing files, bad table)."""


class CacheConfigError(CacheError):
    """``out_dir`` holds a cache made with a different PreprocessConfig."""


# ------------------------------------------------------------------------------------------------ worker

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: dict[str, Any], fmt: str, params: list[int], parent_pid: int | None = None) -> None:
    cv2.setNumThreads(1)  # one image per core; OpenCV's own threads would only oversubscribe
    _WORKER.update(cfg=PreprocessConfig.from_dict(cfg), ext=f".{fmt}", params=params)
    if parent_pid is not None and os.name == "posix":
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(pid: int) -> None:
    """Pool workers block on their task queue forever once the parent is gone (kill -9, kernel restart)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)  # a half-written image stays a .tmp file, swept by the next run
        except PermissionError:
            pass


def _encode(img: Any, ext: str, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return buf.tobytes()


def _cache_one(task: tuple[int, str, str]) -> tuple[int, str, str]:
    """(row, source path, output file) -> (row, status, reason). Never raises for a bad image."""
    row, path, out_file = task
    try:
        img = preprocess_image(path, _WORKER["cfg"])
        write_bytes(out_file, _encode(img, _WORKER["ext"], _WORKER["params"]))
    except ImageReadError as exc:
        return row, "failed", exc.reason
    except Exception as exc:  # a bad image must not stop a 100k-image run; the manifest keeps the reason
        return row, "failed", f"{type(exc).__name__}: {exc}"
    return row, "ok", ""


def _cache_chunk(tasks: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    return [_cache_one(task) for task in tasks]


def _run(
    tasks: list[tuple[int, str, str]], init_args: tuple[Any, ...], workers: int, start_method: str | None
) -> Iterator[tuple[int, str, str]]:
    """Yield results as they finish; in-process for one worker (debuggable, no pickling)."""
    if workers <= 1 or len(tasks) <= 1:
        saved = cv2.getNumThreads()
        _init_worker(*init_args)
        try:
            yield from map(_cache_one, tasks)
        finally:
            cv2.setNumThreads(saved)
        return
    size = max(1, min(8, len(tasks) // (workers * 8)))  # small chunks: steady progress, little lost on a kill
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    pool = ProcessPoolExecutor(
        workers,
        mp_context=_mp_context(start_method),
        initializer=_init_worker,
        initargs=(*init_args, os.getpid()),
    )
    try:
        for future in as_completed([pool.submit(_cache_chunk, chunk) for chunk in chunks]):
            yield from future.result()
    except BrokenProcessPool as exc:
        raise CacheError(
            "cache worker processes died or could not start. Called from a script? Put the call under "
            "`if __name__ == '__main__':` (workers start in fresh processes that import the script), or use "
            "workers=1."
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _mp_context(start_method: str | None) -> mp.context.BaseContext:
    """Workers from a clean process (forkserver, else spawn) unless told otherwise.

    A ``fork`` child inherits OpenCV's thread pool without its threads: its first ``cv2.setNumThreads`` or
    parallel op can deadlock (seen here whenever the parent had run cv2 before), and torch's thread pools
    carry the same hazard. Python 3.14 drops fork as the Linux default for the same reason.
    """
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(start_method)


# ----------------------------------------------------------------------------------------------- helpers


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise CacheError(
            f"build_cache needs a pandas DataFrame with id and path columns, got {type(table).__name__}"
        )
    missing = {"id", "path"} - set(table.columns)
    if missing:
        raise CacheError(
            f"table lacks column(s) {sorted(missing)}; need at least id, path (see kaggle_utils.data.sources)"
        )
    table = table.reset_index(drop=True).copy()
    if table["id"].isna().any():
        raise CacheError(
            f"table has {int(table['id'].isna().sum())} row(s) without an id, e.g. row {table.index[table['id'].isna()][0]}"
        )
    table["id"] = table["id"].astype(str)
    table["path"] = table["path"].astype(str)
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise CacheError(f"table has duplicate ids (cache files are named by id): {sorted(set(dup))[:10]}")
    safe = table["id"].map(lambda s: _SAFE_ID.sub("_", s))
    clash = safe[safe.duplicated()]
    if len(clash):
        raise CacheError(f"ids collide once made file-name safe: {sorted(set(clash))[:10]}; rename them")
    table["_file"] = safe
    return table


def _check_config(out: Path, cfg: PreprocessConfig, force: bool) -> None:
    """Refuse to mix recipes in one folder; ``force`` discards the old cache instead."""
    cfg_file = out / CONFIG
    images = out / IMAGES
    if cfg_file.exists():
        old = read_json(cfg_file)
        try:
            same = PreprocessConfig.from_dict(old) == cfg
        except (TypeError, ValueError):
            same = False
        if same:
            return
        if not force:
            new = cfg.to_dict()
            diff = {
                k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            }
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise CacheConfigError(
                f"{out} was built with a different preprocessing config ({changes}). "
                "Use another output folder, or force=True / --force to discard the old cache."
            )
    elif images.is_dir() and any(images.iterdir()) and not force:
        raise CacheConfigError(
            f"{images} holds files but {cfg_file} is missing, so their config is unknown; "
            "use force=True / --force to discard them, or another output folder."
        )
    if force:
        for f in images.glob("*") if images.is_dir() else ():
            if f.is_file():
                f.unlink()
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()
    write_json(cfg_file, cfg.to_dict())


def _read_manifest(path: Path) -> pd.DataFrame:
    df = read_csv(path)
    df["reason"] = df["reason"].fillna("")
    df["cache_path"] = df["cache_path"].fillna("")
    if "grade" in df.columns:
        df["grade"] = pd.to_numeric(df["grade"], errors="coerce").astype("Int64")
    return df


def _manifest(table: pd.DataFrame, status: dict[int, tuple[str, str]], rel: list[str]) -> pd.DataFrame:
    """Rows of ``table`` that have a status, in table order, with the manifest columns first."""
    rows = sorted(status)
    df = table.iloc[rows].drop(columns="_file").copy()
    df["status"] = [status[i][0] for i in rows]
    df["reason"] = [status[i][1] for i in rows]
    df["cache_path"] = [rel[i] if status[i][0] == "ok" else "" for i in rows]
    if "grade" not in df.columns:
        df["grade"] = pd.array([pd.NA] * len(df), dtype="Int64")
    if "source" not in df.columns:
        df["source"] = ""
    return df[FIRST_COLUMNS + [c for c in df.columns if c not in FIRST_COLUMNS]].reset_index(drop=True)


def summary_line(manifest: pd.DataFrame, out_dir: str | os.PathLike) -> str:
    """One line for logs and the CLI: counts and where the manifest is."""
    s = manifest.attrs.get("summary", {})
    n_ok = int((manifest["status"] == "ok").sum())
    n_failed = int((manifest["status"] != "ok").sum())
    extra = f" ({s['reused']} reused, {s['processed']} processed)" if s else ""
    return f"cache: {n_ok} ok / {n_failed} failed{extra}; manifest: {Path(out_dir) / MANIFEST}"


# ---------------------------------------------------------------------------------------------- public


def build_cache(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    cfg: PreprocessConfig | dict[str, Any] | None = None,
    workers: int | None = None,
    *,
    force: bool = False,
    fmt: str = "png",
    png_compression: int = 3,
    jpeg_quality: int = 95,
    progress: bool = True,
    checkpoint_s: float = 30.0,
    start_method: str | None = None,
) -> pd.DataFrame:
    """Preprocess every row of ``table`` (columns id, path[, grade, source, ...]) into ``out_dir``.

    Returns the manifest (one row per table row, ``status`` ok|failed with ``reason``); its
    ``attrs["summary"]`` counts ok/failed/reused/processed. Bad images become failed rows, never exceptions.
    ``workers`` defaults to all cores; 1 runs in this process. Workers start as fresh processes
    (``start_method`` forkserver/spawn, see :func:`_mp_context`), so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard; notebooks do not. Raises :class:`CacheConfigError` if ``out_dir``
    was built with another config (unless ``force``), :class:`CacheError` for an unusable table.
    """
    cfg = cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg or {})
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    table = _check_table(table)
    out = Path(out_dir)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    swept = sweep_temp_files(out)
    _check_config(out, cfg, force)

    prev_paths: dict[str, str] = {}
    if (out / MANIFEST).exists():
        prev = _read_manifest(out / MANIFEST)
        prev_paths = dict(zip(prev["id"], prev["path"], strict=True))
    rel = [f"{IMAGES}/{name}.{fmt}" for name in table["_file"]]
    status: dict[int, tuple[str, str]] = {}
    tasks: list[tuple[int, str, str]] = []
    for i, (rid, path) in enumerate(zip(table["id"], table["path"], strict=True)):
        # An existing file is complete (atomic writes) and was made with this config (checked above); a
        # manifest saying it came from another source path means the table changed: redo it.
        if (out / rel[i]).is_file() and prev_paths.get(rid, path) == path:
            status[i] = ("ok", "")
        else:
            tasks.append((i, path, str(out / rel[i])))
    reused = len(status)

    params = (
        [cv2.IMWRITE_PNG_COMPRESSION, png_compression]
        if fmt == "png"
        else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    )
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    last = time.monotonic()
    bar = tqdm(total=len(tasks), desc=f"cache {out.name}", unit="img", disable=not progress or not tasks)
    results: Generator[tuple[int, str, str], None, None] = _run(
        tasks, (cfg.to_dict(), fmt, params), workers, start_method
    )
    try:
        for row, state, reason in results:
            status[row] = (state, reason)
            bar.update()
            if time.monotonic() - last > checkpoint_s:
                write_csv(out / MANIFEST, _manifest(table, status, rel))
                last = time.monotonic()
    finally:
        results.close()  # stops the pool now, not at garbage collection
        bar.close()
        # also on KeyboardInterrupt or a pool error, so the progress made is on record
        write_csv(out / MANIFEST, _manifest(table, status, rel))
    manifest = _manifest(table, status, rel)
    n_failed = int((manifest["status"] != "ok").sum())
    manifest.attrs["summary"] = {
        "ok": len(manifest) - n_failed,
        "failed": n_failed,
        "reused": reused,
        "processed": len(tasks),
        "temp_files_swept": swept,
    }
    return manifest


def load_cache(out_dir: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """The ok rows of a cache's manifest, ``cache_path`` made absolute (``path`` stays the original)."""
    out = Path(out_dir).resolve()
    man = out / MANIFEST
    if not man.is_file():
        raise CacheError(
            f"no {MANIFEST} in {out}; build the cache first (build_cache or python -m kaggle_utils.data)"
        )
    df = _read_manifest(man)
    df = df[df["status"] == "ok"].reset_index(drop=True)
    df["cache_path"] = [str(out / p) for p in df["cache_path"]]
    if check_files:
        gone = [p for p in df["cache_path"] if not os.path.isfile(p)]
        if gone:
            raise CacheError(
                f"{len(gone)} cached file(s) listed in {man} are missing, e.g. {gone[0]}; rerun build_cache to restore them"
            )
    return df
