"""The optional extras a configured feature may need, checked before any work starts: a pipeline that
names a deep model without `recsys[deep]` installed stops with one line naming the extra, never with
an ImportError trace."""

from __future__ import annotations

import importlib.util

NEEDS_DEEP = "needs PyTorch, the optional extra recsys[deep]: pip install 'recsys[deep]'"


def deep_missing() -> str | None:
    """NEEDS_DEEP when torch cannot be imported; None when it can. A lookup, not an import: torch takes
    seconds to import, and the check runs on every pipeline."""
    return NEEDS_DEEP if importlib.util.find_spec("torch") is None else None
