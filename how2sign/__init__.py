"""how2sign: plain-PyTorch training library for How2Sign sign-language translation.

It never imports optuna; the search service drives it through ``train(..., report=...)``.
"""

__version__ = "0.1.0"
