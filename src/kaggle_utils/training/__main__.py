"""Train one fold from a YAML/JSON TrainConfig.

    python -m kaggle_utils.training --config fold0.yaml [--set epochs=5 --set lr=3e-4] [--overwrite]
    torchrun --nproc_per_node 2 -m kaggle_utils.training --config fold0.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kaggle_utils.training.config import TrainConfig
from kaggle_utils.training.loop import train_fold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.training", description="Train one fold (works under torchrun too).")
    parser.add_argument("--config", required=True, help="TrainConfig as .json or .yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field; VALUE parsed as JSON when possible (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in out_dir")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_file(args.config)
        changes = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            try:
                changes[key] = json.loads(value)
            except json.JSONDecodeError:
                changes[key] = value
        if args.overwrite:
            changes["overwrite"] = True
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes}).validate()
        result = train_fold(cfg)
    except (OSError, KeyError, ValueError) as err:  # config, data and settings-mismatch errors: one line
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {str(msg).splitlines()[0]}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
