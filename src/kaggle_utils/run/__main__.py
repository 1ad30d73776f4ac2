"""Run the whole chain from one YAML config (``--plan``: print the steps and their times, run nothing); with
``devices:`` above one slot, training steps run side by side, one per GPU (or per share of the CPU cores).

    python -m kaggle_utils.run configs/demo.yaml [--workdir DIR] [--budget-hours H] [--plan [--measure]]
                                                 [--overwrite]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from kaggle_utils.run.chain import (
    BudgetExceeded,
    Interrupted,
    problem_counts,
    run_chain,
    test_summary,
    training_summary,
)
from kaggle_utils.run.config import load_config


def _print_plan(config: str, workdir: str | None, budget_hours: float | None, measure: bool = False) -> int:
    """Exit status 0, or with ``measure`` 3 when the measured total exceeds the budget (the training kernel
    runs this first and stops on 3); 2 for a config error."""
    from kaggle_utils.data.labels import SourceError
    from kaggle_utils.run.estimate import describe, format_plan

    try:
        cfg = load_config(config, plan_only=True)
        if budget_hours is not None:
            cfg["budget_hours"] = budget_hours
        rows, facts = describe(cfg, Path(workdir or cfg.get("workdir", "outputs/run")).resolve())
    except (OSError, ValueError, SourceError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if not measure:
        print(format_plan(rows, facts))
        return 0
    from kaggle_utils.run.measure import measure as measure_steps
    from kaggle_utils.run.measure import verdict

    try:
        measure_steps(cfg, rows, facts)
    except (OSError, ValueError) as err:  # e.g. no sample image to measure on
        print(f"error: cannot measure: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[measure] interrupted", file=sys.stderr)
        return 130
    print(format_plan(rows, facts))
    line, fits = verdict(facts)
    print(line, file=sys.stdout if fits else sys.stderr)
    return 0 if fits else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML parameters file (see configs/)")
    parser.add_argument("--workdir", help="output folder (default: the config's workdir)")
    parser.add_argument("--budget-hours", type=float, help="overall budget (default: config, else 9)")
    parser.add_argument("--plan", action="store_true",
                        help="print every step, what it trains on and its estimated time here and on a P100; "
                             "run nothing")
    parser.add_argument("--measure", action="store_true",
                        help="with --plan: time a few real training steps of every model, preprocessing and "
                             "inference on this machine's device (CUDA, else CPU) and print the measured times "
                             "beside the estimates; exit status 3 when the measured total exceeds the budget")
    parser.add_argument("--overwrite", action="store_true",
                        help="training steps that run start afresh, discarding a run with other settings in "
                             "their out_dir (instead of stopping with a settings mismatch)")
    args = parser.parse_args(argv)
    budget = None if args.budget_hours is None else args.budget_hours * 3600
    if args.plan or args.measure:
        return _print_plan(args.config, args.workdir, args.budget_hours, args.measure)
    from kaggle_utils.data.labels import SourceError

    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops it the way Ctrl-C does
    try:
        log = run_chain(args.config, args.workdir, budget, overwrite=args.overwrite)
    except Interrupted as err:
        during = f"step {err.step!r}" if len(err.steps) == 1 else "steps " + ", ".join(map(repr, err.steps))
        print(f"\n[run] interrupted during {during}; rerun the same command to resume (finished steps "
              "are skipped, training resumes from its last checkpoint)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # between steps
        print("\n[run] interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BudgetExceeded as err:
        print(f"[run] stopped: {err}", file=sys.stderr)
        return 3
    except (OSError, ValueError, SourceError) as err:  # the config: checked before any step runs
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # StepFailed: the exception's last lines and where its traceback is
        print(f"error: {err}", file=sys.stderr)
        return 1
    outputs = log.get("outputs", {})
    total = sum(s["seconds"] for s in log["steps"].values())
    print(f"[run] all steps done ({total / 60:.1f} min of step time)")
    print(f"[run] {training_summary(outputs)}")
    print(f"[run] {test_summary(outputs)}")
    for key, path in outputs.items():
        if key != "cache_manifests":
            print(f"[run] {key}: {path}")
    problems = sum(problem_counts(outputs).values())
    if problems:
        print(f"[run] exit status 1: {problems} skipped row(s) or failed image(s) above; the submission covers "
              "every test id (unreadable ones get the fallback grade)", file=sys.stderr)
    return 1 if problems else 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
