"""Models: the public model API and the registry every command reads (see :mod:`xmfast.models.api`).

``from xmfast.models import Model, Sizes, register`` is all a new model needs; the built-in
models (:mod:`xmfast.models.builtin`) are written with nothing else. Importing this package
loads no model and no torch.
"""

from xmfast.models.api import (
    BATCHES,
    DEFAULT_RECIPE,
    ENTRY_POINT_GROUP,
    OBJECTIVES,
    Model,
    NoSettings,
    Sizes,
    check_dependencies,
    config_from_dict,
    get_model,
    label_of,
    model_names,
    refresh,
    register,
    unregister,
    with_recipe,
)

__all__ = [
    "BATCHES", "DEFAULT_RECIPE", "ENTRY_POINT_GROUP", "OBJECTIVES", "Model", "NoSettings", "Sizes", "check_dependencies",
    "config_from_dict", "get_model", "label_of", "model_names", "refresh", "register", "unregister",
    "with_recipe",
]
