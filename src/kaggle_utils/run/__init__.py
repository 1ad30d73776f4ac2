"""The chain: a YAML of sources, stages and models -> papermill notebook steps inside a time budget.

``config`` reads and checks the YAML, ``chain`` plans and runs the steps (resumable, :func:`run_chain`),
``estimate`` prints the plan with measured costs (``--plan``). ``python -m kaggle_utils.run CONFIG`` runs it.
"""

from kaggle_utils._exports import lazy_exports

# name -> defining module, imported on first use (so importing the package stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "BudgetExceeded", "Step", "plan", "Runner", "pack_parameters", "run_chain", "test_summary",
        "REPO_ROOT", "NOTEBOOKS", "KAGGLE_BUDGET_S", "LOG_FILE",
    ], "kaggle_utils.run.chain"),
    **dict.fromkeys([
        "load_config", "check_config", "expand_models", "TOP_KEYS", "MODEL_KEYS", "PRETRAIN_KEYS",
        "CHAIN_FIELDS",
    ], "kaggle_utils.run.config"),
    **dict.fromkeys([
        "Cost", "forward_gflop", "describe", "format_plan",
    ], "kaggle_utils.run.estimate"),
    **dict.fromkeys([
        "main",
    ], "kaggle_utils.run.__main__"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
