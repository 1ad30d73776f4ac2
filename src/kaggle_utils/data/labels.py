"""Reading and checking label files: CSV parsing, grade parsing, image lookup and the per-row problem report.

Shared by every reader in :mod:`kaggle_utils.data.sources`; :func:`validate` runs the same checks on any
table. Imports no torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from kaggle_utils import io

CORE_COLUMNS = ("id", "path", "grade", "source")
REPORT_COLUMNS = ("source", "row", "id", "kind", "reason")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_LISTED = 20  # bad rows spelled out in a SourceError; the rest are counted

OnError = Literal["raise", "skip"]
# A table, or (table, report) when return_report=True.
LoadResult = pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]


class SourceError(ValueError):
    """A label file or image folder that cannot be used as is; ``.report`` holds the offending rows."""

    def __init__(self, message: str, report: pd.DataFrame | None = None):
        super().__init__(message)
        self.report = report if report is not None else _empty_report()


class SourceWarning(UserWarning):
    """Rows were dropped under ``on_error="skip"``."""


def validate(
    table: pd.DataFrame, on_error: OnError = "raise", *, what: str = "table"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check any table (empty ids, missing images, grades not integers 0-4, duplicate ids) -> (table, report).

    Report ``row`` values are the table's index labels (the loaders use CSV line numbers). The returned
    table has ``grade`` as Int64.
    """
    return _finish(table, _check(table, {}), on_error, what)


def _check(
    table: pd.DataFrame, problems: dict[Any, list[tuple[str, str]]], skip_path: Iterable[Any] = ()
) -> dict[Any, list[tuple[str, str]]]:
    """Add the generic problems to ``problems`` (index label -> [(kind, reason)]); rows in ``skip_path`` have
    had their image problem reported already."""
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; build it with a load_* function")
    problems = {k: list(v) for k, v in problems.items()}
    skip_path = set(skip_path)

    def add(idx: Any, kind: str, reason: str) -> None:
        problems.setdefault(idx, []).append((kind, reason))

    ids = table["id"]
    blank_id = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy(bool)
    for idx, blank, p in zip(table.index, blank_id, table["path"], strict=True):
        if blank:
            add(idx, "missing_id", "empty id")
        elif idx not in skip_path and not (isinstance(p, str) and os.path.isfile(p)):
            add(idx, "missing_image", f"image not found: {p}")

    grade = table["grade"]
    if grade.notna().any():  # a labelled table: every row needs a grade
        numeric = pd.to_numeric(grade, errors="coerce")
        bad = (grade.notna() & ~numeric.isin([0, 1, 2, 3, 4])).to_numpy(bool)
        for idx, is_bad, is_na in zip(table.index, bad, grade.isna().to_numpy(bool), strict=True):
            if is_bad:
                add(idx, "bad_grade", f"grade {grade[idx]!r} is not an integer 0-4")
            elif is_na and not any(k in ("bad_grade", "ungradable") for k, _ in problems.get(idx, [])):
                add(idx, "missing_grade", "empty grade in a labelled table")

    dup = ids.duplicated(keep=False).to_numpy(bool) & ~blank_id
    for _, grp in table.loc[dup].groupby("id", sort=False):
        grades = sorted({str(g) for g in grp["grade"].dropna()})
        if len(grades) > 1:
            for idx in grp.index:
                add(
                    idx,
                    "duplicate_id",
                    f"id repeated with conflicting grades {grades} (rows {list(grp.index)})",
                )
        else:
            for idx in grp.index[1:]:
                add(idx, "duplicate_id", f"id repeated (first at row {grp.index[0]})")
    return problems


def _finish(
    table: pd.DataFrame,
    problems: dict[Any, list[tuple[str, str]]],
    on_error: OnError,
    what: str,
    stacklevel: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raise, or drop + warn; never silent."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    report = _report(table, problems)
    if not report.empty:
        if on_error == "raise":
            raise SourceError(_format_error(report, what, len(table)), report)
        bad_rows = report["row"].unique()
        kinds = report.drop_duplicates(["row", "kind"])["kind"].value_counts()
        warnings.warn(
            f"{what}: skipped {len(bad_rows)} of {len(table)} rows "
            f"({', '.join(f'{k}: {n}' for k, n in kinds.items())}); pass return_report=True for the list",
            SourceWarning,
            stacklevel=stacklevel,
        )
        table = table.drop(index=bad_rows)
    table = table.copy()
    table["grade"] = pd.to_numeric(table["grade"], errors="coerce").astype("Int64")
    return table, report


def _report(table: pd.DataFrame, problems: dict[Any, list[tuple[str, str]]]) -> pd.DataFrame:
    order = {idx: i for i, idx in enumerate(table.index)}
    rows = [
        (
            table.at[idx, "source"] if "source" in table.columns else None,
            idx,
            table.at[idx, "id"],
            kind,
            reason,
        )
        for idx in sorted(problems, key=lambda i: order.get(i, -1))
        for kind, reason in problems[idx]
    ]
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS)) if rows else _empty_report()


def _empty_report() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})


def _format_error(report: pd.DataFrame, what: str, n_rows: int) -> str:
    n_bad = report["row"].nunique()
    lines = [f"  row {r.row} id={r.id!r}: {r.reason}" for r in report.head(MAX_LISTED).itertuples()]
    more = len(report) - MAX_LISTED
    return (
        f"{what}: {n_bad} bad row(s) of {n_rows} ({len(report)} problem(s)):\n"
        + "\n".join(lines)
        + (f"\n  ... and {more} more problem(s)" if more > 0 else "")
        + "\nFix the CSV or the image folder, or pass on_error='skip' to drop these rows."
    )


# ------------------------------------------------------------------------------------------- internals


def read_label_csv(
    csv: str | os.PathLike, id_col: str | None = None, str_cols: Iterable[str] | None = ()
) -> pd.DataFrame:
    """Read with ids/grades/paths as text (hex ids like '12e4' must not become floats), strip header spaces,
    drop all-empty columns and rows (the official IDRiD file has both); index = CSV line number."""
    path = Path(csv).expanduser()
    if not path.is_file():
        raise SourceError(f"label file not found: {path}")
    try:
        df = io.read_csv(path, text=str_cols, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path}: cannot parse CSV ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    df = df.dropna(axis=1, how="all").dropna(axis=0, how="all")
    df = df.loc[:, [not c.startswith("Unnamed:") or df[c].notna().any() for c in df.columns]]
    df.index = df.index + 2  # header is line 1
    if id_col is not None:
        require_columns(df, path, [id_col])
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
            df[c] = df[c].str.strip()
    return df


def require_columns(df: pd.DataFrame, csv: Any, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SourceError(f"{csv}: missing column(s) {missing}; found {list(df.columns)}")


def to_int64(values: pd.Series) -> pd.Series:
    """Lenient numeric -> Int64 for side columns (dme, gradable); non-integers become <NA>."""
    num = pd.to_numeric(values, errors="coerce")
    num = num.where(np.isfinite(num) & (num % 1 == 0))
    return num.astype("Int64")


def _parse_grades(values: pd.Series | None, index: pd.Index) -> tuple[pd.Series, dict[Any, list]]:
    """Strict: '2' and '2.0' are grade 2; '2.5', '7', 'x' are reported, never rounded or coerced."""
    out = pd.Series(pd.NA, index=index, dtype="Int64")
    problems: dict[Any, list[tuple[str, str]]] = {}
    if values is None:
        return out, problems
    text = values.astype("string").str.strip()
    blank = text.isna() | (text == "")
    num = pd.to_numeric(text.where(~blank), errors="coerce").astype("Float64")
    ok = num.isin([0, 1, 2, 3, 4]).fillna(False) & ~blank
    for idx in index[(~ok & ~blank).to_numpy(bool)]:
        problems[idx] = [("bad_grade", f"grade {values[idx]!r} is not an integer 0-4")]
    out[ok.to_numpy(bool)] = num[ok].astype("Int64")
    return out, problems


class _ImageIndex:
    """One listing of ``image_dir``: 88k EyePACS rows cost one ``listdir``; case/extension mismatches resolve."""

    def __init__(self, image_dir: str | os.PathLike):
        self.dir = Path(os.path.abspath(Path(image_dir).expanduser()))  # absolute; symlinks kept
        if not self.dir.is_dir():
            raise SourceError(f"image folder not found: {self.dir}")
        names = sorted(os.listdir(self.dir))
        self.exact = set(names)
        self.lower: dict[str, str] = {}
        self.stems: dict[str, list[str]] = {}
        for n in names:
            self.lower.setdefault(n.lower(), n)
            stem, suffix = os.path.splitext(n)
            if suffix.lower() in IMAGE_EXTS:
                self.stems.setdefault(stem.lower(), []).append(n)

    def _find(self, name: str) -> str | None:
        if name in self.exact:
            return name
        return self.lower.get(name.lower())

    def resolve(self, name: str, ext: str | None) -> tuple[str, tuple[str, str] | None]:
        """(absolute path, problem or None); the path is the expected location when the file is missing."""
        if ext:
            ext = ext if ext.startswith(".") else "." + ext
            hit = self._find(name + ext) or self._find(name)
            return str(self.dir / (hit or name + ext)), None
        hit = self._find(name) if os.path.splitext(name)[1].lower() in IMAGE_EXTS else None
        if hit:
            return str(self.dir / hit), None
        cands = self.stems.get(name.lower(), [])
        if len(cands) == 1:
            return str(self.dir / cands[0]), None
        if len(cands) > 1:
            return str(self.dir / name), ("ambiguous_image", f"several images match: {', '.join(cands)}")
        return str(self.dir / name), ("missing_image", f"no image named {name}.* in {self.dir}")


def build_source_table(
    df: pd.DataFrame,
    csv: Any,
    image_dir: str | os.PathLike,
    source: str,
    id_col: str,
    grade_col: str | None,
    path_col: str | None,
    ext: str | None,
    on_error: OnError,
    return_report: bool,
    problems: dict[Any, list[tuple[str, str]]] | None = None,
) -> LoadResult:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    problems = dict(problems or {})
    index = _ImageIndex(image_dir)
    ids = df[id_col].astype("string").str.strip().fillna("")
    grade, grade_problems = _parse_grades(df[grade_col] if grade_col in df.columns else None, df.index)
    for idx, p in grade_problems.items():
        problems.setdefault(idx, []).extend(p)

    paths = []
    for idx in df.index:
        if path_col is not None:
            rel = df.at[idx, path_col]
            p = str(rel) if isinstance(rel, str) and rel else ""
            paths.append(os.path.normpath(index.dir / p) if p else "")
            if not p:
                problems.setdefault(idx, []).append(("missing_image", f"empty {path_col!r}"))
            continue
        path, problem = index.resolve(ids[idx], ext) if ids[idx] else ("", None)
        paths.append(path)
        if problem:
            problems.setdefault(idx, []).append(problem)

    used = {id_col, grade_col, path_col} - {None}
    extras = df.drop(columns=[c for c in df.columns if c in used])
    extras = extras.rename(columns={c: f"csv_{c}" for c in extras.columns if c in CORE_COLUMNS})
    table = pd.concat(
        [
            pd.DataFrame(
                {"id": ids.astype(str), "path": paths, "grade": grade, "source": source}, index=df.index
            ),
            extras,
        ],
        axis=1,
    )
    skip_path = [i for i, ps in problems.items() if any(k.endswith("_image") for k, _ in ps)]
    problems = _check(table, problems, skip_path)
    table, report = _finish(table, problems, on_error, f"{source} labels {csv}", stacklevel=4)
    table = table.reset_index(drop=True)
    return (table, report) if return_report else table
