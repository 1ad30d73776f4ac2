"""Lazy re-exports for the stage packages (PEP 562).

``from kaggle_utils.data import load_aptos`` must not import torch, yet ``from kaggle_utils.data import
FundusDataset`` should work too: each package's ``__init__`` lists its names and the module that defines each,
and a name is imported on first use. The table is a plain dict literal so the import-graph test can read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a name to its module (dotted)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # resolved once
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__

