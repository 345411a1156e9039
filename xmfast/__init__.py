"""xmfast: fast, reproducible cross-market product recommendation on XMarket.

The Rust helpers are the documented module :mod:`xmfast.core` (``from xmfast import core``);
the typed Python API is in :mod:`xmfast.ratings` (reading and filtering rating files),
:mod:`xmfast.prepare` (building a prepared dataset), :mod:`xmfast.dataset` (loading one),
:mod:`xmfast.stats` and :mod:`xmfast.synth`.
"""

from xmfast import core
from xmfast.errors import XmfastError

__version__: str = core.__version__

__all__ = ["XmfastError", "core", "__version__"]
