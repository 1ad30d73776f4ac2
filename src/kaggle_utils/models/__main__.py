"""List or download pretrained backbone weights (``python -m kaggle_utils.models list|download``).

See :mod:`kaggle_utils.models.weights` for where files are looked up and how they are verified.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kaggle_utils.models.weights import (
    ENV_DIRS,
    ENV_MANIFEST,
    MANIFEST_PATH,
    WEIGHTS_DIR,
    WeightsError,
    download,
    list_weights,
    load_manifest,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.models", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help=f"manifest JSON (default ${ENV_MANIFEST} or {MANIFEST_PATH})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="show which weight files are present, verified or missing")
    ls.add_argument("--no-verify", action="store_true", help="skip hashing (fast)")
    dl = sub.add_parser("download", help="download official weight files (needs internet)")
    dl.add_argument("names", nargs="+", metavar="NAME", help="model names, or 'all'")
    dl.add_argument("--dest", help=f"target folder (default ${ENV_DIRS} or {WEIGHTS_DIR})")
    dl.add_argument("--url", help="download from this URL instead of the manifest's (one NAME only)")
    dl.add_argument("--force", action="store_true", help="download even if a verified file is present")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)

    if args.cmd == "list":
        rows = list_weights(manifest, verify=not args.no_verify)
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['status']:<10}  {r['path'] or r['file']}")
        return 0

    names = [n for n in manifest if manifest[n].get("url")] if args.names == ["all"] else args.names
    if args.url and len(names) != 1:
        parser.error("--url needs exactly one NAME")
    failed = 0
    for name in names:
        try:
            path = download(name, args.dest, url=args.url, manifest=manifest, force=args.force)
            print(f"{name}: ok {path}")
        except WeightsError as exc:
            failed += 1
            print(f"{name}: FAILED\n{exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
