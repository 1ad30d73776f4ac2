"""``python -m kaggle_utils.data``: preprocess a labelled table into a cache (and optionally its folds).

    python -m kaggle_utils.data --source aptos --csv train.csv --images train_images --out cache/aptos512 \
        --size 512 [--ben] [--clahe] [--circle] [--workers N] [--folds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.data.preprocess import RESIZE_MODES, PreprocessConfig


def _load_table(args: argparse.Namespace) -> tuple[Any, Any]:
    """(table, rows the source reader dropped with reasons, or None)."""
    import warnings

    from kaggle_utils import io
    from kaggle_utils.data import labels, sources

    if args.table:
        if not Path(args.table).is_file():
            raise SystemExit(f"error: --table {args.table} not found")
        table = io.read_csv(args.table, text=None)
        missing = {"id", "path"} - set(table.columns)
        if missing:
            raise SystemExit(
                f"error: --table {args.table} lacks column(s) {sorted(missing)} (need id,path[,grade])"
            )
        if table["id"].isna().any():
            lines = [int(i) + 2 for i in table.index[table["id"].isna()][:10]]
            raise SystemExit(f"error: --table {args.table}: rows without an id at CSV line(s) {lines}")
        dup = table["id"][table["id"].duplicated()]
        if len(dup):
            raise SystemExit(f"error: --table {args.table}: {dup.nunique()} id(s) repeat: {sorted(set(dup))[:10]}")
        if "grade" in table.columns:  # blank = unlabelled (kept); anything but an integer 0-4 is an error
            grades, problems = labels._parse_grades(table["grade"], table.index)
            if problems:
                bad = [f"{table.at[i, 'id']}={table.at[i, 'grade']!r}" for i in list(problems)[:10]]
                more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
                raise SystemExit(f"error: --table {args.table}: {len(problems)} grade(s) not an integer 0-4: "
                                 f"{', '.join(bad)}{more}")
            table["grade"] = grades
        return table, None
    if not (args.source and args.csv and args.images):
        raise SystemExit("error: give --table table.csv, or --source with --csv and --images")
    extra = {k: v for k in ("id_col", "grade_col", "path_col", "ext") if (v := getattr(args, k)) is not None}
    # "skip" so one missing image does not stop a 35k-image run; the dropped rows count as failures below
    # (source_report.csv lists them, so the reader's "pass return_report=True" hint is not for CLI users).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", labels.SourceWarning)
            return sources.load_source(
                args.source, csv=args.csv, image_dir=args.images, on_error="skip", return_report=True, **extra
            )
    except labels.SourceError as err:
        raise SystemExit(f"error: {str(err).splitlines()[0]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Preprocess a whole table into a cache (and, with --folds N, write duplicate-aware folds.csv for training).
    Exit status 0 when every row was cached, 1 if any image failed or a label row was skipped (the summary line
    counts both), 2 on a usage, input or config-clash error (one `error:` line)."""
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.data", description=main.__doc__)
    src = parser.add_argument_group("input (either --table, or --source/--csv/--images)")
    src.add_argument("--source", choices=["aptos", "eyepacs", "idrid", "messidor", "generic"])
    src.add_argument("--csv", help="label CSV of the source")
    src.add_argument("--images", help="image folder of the source")
    src.add_argument("--id-col", help="generic source: id column")
    src.add_argument("--grade-col", help="generic source: grade column")
    src.add_argument("--path-col", help="generic source: image path column")
    src.add_argument("--ext", help="image extension when paths are built from ids (e.g. .png)")
    src.add_argument("--table", help="CSV with id,path[,grade,source] columns instead of a source reader")
    parser.add_argument("--out", required=True, help="cache folder (images/, manifest.csv, preprocess.json)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="pad")
    parser.add_argument("--no-crop", action="store_true", help="keep the black border")
    parser.add_argument("--framing", type=float, default=None, help="standardise_framing factor (e.g. 1.0)")
    parser.add_argument("--circle", action="store_true", help="mask outside the retina circle")
    parser.add_argument("--clahe", action="store_true", help="CLAHE on the L channel")
    parser.add_argument("--ben", action="store_true", help="Ben Graham local-contrast normalisation")
    parser.add_argument("--ben-sigma", type=float, default=None, help="fixed blur sigma (default: radius/30)")
    parser.add_argument("--full-decode", action="store_true", help="no reduced-scale JPEG decoding")
    parser.add_argument("--format", choices=["png", "jpg"], default="png", help="cache image format")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--force", action="store_true", help="discard a cache made with another config")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--folds", type=int, metavar="N",
                        help="also write OUT/folds.csv: N grade-stratified folds, duplicate images kept together")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed (default %(default)s)")
    args = parser.parse_args(argv)
    if args.folds is not None and args.folds < 2:
        parser.error("--folds needs N >= 2")

    from kaggle_utils.data import cache
    from kaggle_utils.io import write_csv

    cfg = PreprocessConfig(
        size=args.size,
        crop=not args.no_crop,
        framing=args.framing,
        resize_mode=args.resize_mode,
        circle=args.circle,
        clahe=args.clahe,
        ben_graham=args.ben,
        ben_sigma=args.ben_sigma,
        reduced_decode=not args.full_decode,
    )
    try:
        table, dropped = _load_table(args)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2
    try:
        manifest = cache.build_cache(
            table,
            args.out,
            cfg,
            workers=args.workers,
            force=args.force,
            fmt=args.format,
            progress=not args.no_progress,
        )
    except cache.CacheError as exc:  # config clash, unusable table (e.g. ids that clash as file names)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = manifest[manifest["status"] != "ok"]
    for row in failed.head(20).itertuples():
        print(f"failed: {row.id} ({row.path}): {row.reason}", file=sys.stderr)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more failures", file=sys.stderr)
    n_dropped = 0 if dropped is None else int(dropped["row"].nunique() if "row" in dropped else len(dropped))
    if n_dropped:
        report = Path(args.out) / "source_report.csv"
        write_csv(report, dropped)
        print(
            f"source reader skipped {n_dropped} label row(s) ({len(dropped)} problem(s): missing/bad images or labels): see {report}",
            file=sys.stderr,
        )
    folds_note = ""
    if args.folds:
        try:
            folds_note = _write_folds(args.out, args.folds, args.seed, args.workers, not args.no_progress)
        except ValueError as exc:
            print(f"{cache.summary_line(manifest, args.out)}; no folds.csv", file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    skipped = f"; {n_dropped} label row(s) skipped" if n_dropped else ""
    status = 1 if len(failed) or n_dropped else 0
    print(f"{cache.summary_line(manifest, args.out)}{skipped}{folds_note}"
          + ("" if status == 0 else f" (exit status {status})"))
    return status


def _write_folds(out: str, n_folds: int, seed: int, workers: int | None, progress: bool) -> str:
    """``out/folds.csv`` from the cached (ok) rows with grades, duplicate groups found on the cached images."""
    from kaggle_utils.data import cache, folds

    cached = cache.load_cache(out)
    labelled = cached[cached["grade"].notna()].reset_index(drop=True)
    if len(labelled) < n_folds:
        raise ValueError(f"only {len(labelled)} labelled image(s) cached: too few for {n_folds} folds")
    table = folds.add_duplicate_groups(labelled, path_col="cache_path", workers=workers, progress=progress)
    table = folds.make_folds(table, n_folds=n_folds, seed=seed)
    path = folds.write_folds(table, Path(out) / "folds.csv")
    return f"; {n_folds} folds: {path}"


if __name__ == "__main__":
    sys.exit(main())
