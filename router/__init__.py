"""The prompt router: a small classifier that sends each prompt to the zoo task whose adapter should answer it,
or to `none` (the plain base answers). Fit from the task registry (`fit_router`), stored in the zoo as JSON +
safetensors (`load_router`), mapped to adapters with `route_to_adapter`.

    from router import fit_router, load_router, route_to_adapter
    router = load_router(zoo)
    router.route(["Is this review positive? Great film."])  # [{"route": "sentiment", "probs": {...}}]
"""

from router.api import adapter_map, fit_router, load_router, route_to_adapter, save_router, zoo_routes
from router.model import NONE, Router

__all__ = ["NONE", "Router", "fit_router", "load_router", "route_to_adapter", "adapter_map", "save_router",
           "zoo_routes"]
