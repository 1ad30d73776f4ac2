"""Atomic artifact writes and Kaggle/local path resolution.

Every artifact the pipeline writes goes through :func:`atomic_write`, so a run killed at any moment leaves
either the old file or the new one, never half of one. No torch here: this is the bottom floor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; artifacts get the usual umask-based mode


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Sorted keys and a trailing newline, so equal objects give byte-identical files."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | os.PathLike, df: Any, **kwargs: Any) -> Path:
    """Write a pandas DataFrame atomically (``index=False`` unless told otherwise)."""
    kwargs.setdefault("index", False)
    with atomic_write(path, "w") as fh:
        df.to_csv(fh, lineterminator="\n", **kwargs)
    return Path(path)


def write_figure(path: str | os.PathLike, fig: Any, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format follows the file suffix."""
    path = Path(path)
    kwargs.setdefault("dpi", 110)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def sweep_temp_files(folder: str | os.PathLike) -> int:
    """Remove leftovers of :func:`atomic_write` from a killed run; returns how many were removed."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (its working directory exists and the env marks it)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or KAGGLE_WORKING.is_dir()


def input_root(default: str | os.PathLike = ".") -> Path:
    """Where input datasets live: ``/kaggle/input`` on Kaggle, ``default`` elsewhere."""
    return KAGGLE_INPUT if on_kaggle() else Path(default)


def working_root(default: str | os.PathLike = "outputs") -> Path:
    """Where outputs go: ``/kaggle/working`` on Kaggle, ``default`` elsewhere."""
    return KAGGLE_WORKING if on_kaggle() else Path(default)


def dataclass_from_dict(cls: type[T], data: dict[str, Any], noun: str = "keys") -> T:
    """``cls(**data)`` for a config read back from JSON/YAML: missing keys take defaults, but a misspelt one
    is an error naming every known key, never silently ignored."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} {noun} {unknown}; known: {sorted(names)}")
    return cls(**data)
