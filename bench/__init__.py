"""teambot's benchmark: ``python -m bench`` (``--quick`` for a smoke run). Figures, not pass/fail."""
