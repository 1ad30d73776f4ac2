"""Atomic artifact writes, CSVs read back with ids as text, config keys checked, Kaggle/local paths.

Every artifact the pipeline writes goes through :func:`atomic_write`, so a run killed at any moment leaves
either the old file or the new one, never half of one; every CSV with ids is read back through
:func:`read_csv`, so an id like ``NA`` or ``00123`` means the same in every stage. No torch here: this is the
bottom floor (pandas is imported only by the functions that need it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")

# Columns that name things (images, files, sources, reasons): text exactly as written, never a number or NaN.
TEXT_COLUMNS = frozenset({"id", "id_code", "image", "path", "cache_path", "source", "dataset", "patient",
                          "image_hash", "status", "reason", "model"})

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


def read_csv(path: str | os.PathLike, text: Iterable[str] | None = TEXT_COLUMNS, **kwargs: Any
             ) -> pd.DataFrame:
    """``pandas.read_csv`` with the ``text`` columns (``None``: all) as str exactly as written.

    pandas' default NA parsing turns the ids ``NA``, ``null`` or ``nan`` into NaN and ``00123`` into 123, so
    one stage would know an image by a name the next cannot find. In text columns only an empty field is
    missing; the other columns (grades, predictions) parse as pandas does by default. ``kwargs`` go to pandas
    (a ``dtype`` dict is merged with the text columns').
    """
    import pandas as pd

    if text is None:
        return pd.read_csv(path, **({"dtype": str, "keep_default_na": False, "na_values": [""]} | kwargs))
    return pd.read_csv(path, **(kwargs | _text_options(path, set(text), kwargs)))


def _text_options(path: str | os.PathLike, text: set[str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """NA parsing off in the ``text`` columns only. pandas takes NA strings per column just when it is given
    every column's list, so the header is read first and the other columns get pandas' defaults."""
    import pandas as pd
    from pandas._libs.parsers import STR_NA_VALUES  # pandas' default NA strings (no public name for them)

    columns = pd.read_csv(path, nrows=0, **{k: v for k, v in kwargs.items() if k not in ("dtype", "nrows")}).columns
    default_na = sorted(STR_NA_VALUES)
    return {"dtype": {c: str for c in columns if c in text} | dict(kwargs.get("dtype") or {}),
            "keep_default_na": kwargs.get("keep_default_na", False),
            "na_values": kwargs.get("na_values", {c: [""] if c in text else default_na for c in columns})}


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


def check_keys(what: str, given: Iterable[str], known: Iterable[str]) -> None:
    """ValueError for keys of ``given`` not in ``known``: a misspelt setting is an error, never silently
    ignored. Each gets its nearest known key (``did you mean 'epochs'?``); the whole known list is shown only
    when some key has none, so a typo costs one short line, not forty names."""
    names = sorted(set(known))
    unknown = sorted(set(given) - set(names))
    if not unknown:
        return
    close = {key: difflib.get_close_matches(key, names, n=1, cutoff=0.75) for key in unknown}  # typos, not kin
    listed = ", ".join(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in close.items())
    rest = "" if all(close.values()) else f"; known: {names}"
    raise ValueError(f"unknown {what} {listed}{rest}")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], noun: str = "keys") -> T:
    """``cls(**data)`` for a config read back from JSON/YAML: missing keys take defaults, but a misspelt one
    is an error (see :func:`check_keys`)."""
    check_keys(f"{cls.__name__} {noun}", data, (f.name for f in dataclasses.fields(cls)))  # type: ignore[arg-type]
    return cls(**data)
