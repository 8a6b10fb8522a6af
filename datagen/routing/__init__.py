"""Route planning on a scene's walkable floor: the planner protocol, the two backends and the choice.

- :mod:`datagen.routing.builtin`: the exact built-in planner (:class:`FloorPlan`: walkable floor as
  polygons, visibility-graph shortest paths), pip-installable dependencies only.
- :mod:`datagen.routing.habitat`: habitat-sim's navmesh (:class:`HabitatFloorPlan`), when
  ``habitat_sim`` imports (conda-only).

:func:`resolve_route_planner` turns ``"auto"`` / ``"builtin"`` / ``"habitat"`` into the backend a
run uses (on the driver, so every worker plans with the same one), :func:`make_route_planner`
builds it for one scene.
"""

from __future__ import annotations

from typing import Literal, get_args

from datagen.routing.builtin import FloorPlan, RoutePlanner, RoutePlannerConfig
from datagen.routing.habitat import HabitatFloorPlan, import_habitat_sim
from vlm3r_core.scene import Scene

__all__ = ["ROUTE_PLANNERS", "RoutePlanner", "RoutePlannerChoice", "make_route_planner", "resolve_route_planner"]

RoutePlannerChoice = Literal["auto", "builtin", "habitat"]  # auto: habitat when habitat_sim imports
ROUTE_PLANNERS: tuple[str, ...] = get_args(RoutePlannerChoice)


def resolve_route_planner(choice: RoutePlannerChoice) -> Literal["builtin", "habitat"]:
    """``"builtin"`` or ``"habitat"`` for a choice of :data:`ROUTE_PLANNERS` (``"auto"``: habitat
    when ``habitat_sim`` imports). ``"habitat"`` without habitat_sim raises ImportError."""
    if choice not in ROUTE_PLANNERS:
        raise ValueError(f"route planner must be one of {ROUTE_PLANNERS}, got {choice!r}")
    if choice == "habitat":
        import_habitat_sim()
        return choice
    if choice == "auto":
        try:
            import_habitat_sim()
        except ImportError:
            return "builtin"
        return "habitat"
    return choice


def make_route_planner(
    scene: Scene, choice: RoutePlannerChoice, config: RoutePlannerConfig = RoutePlannerConfig()
) -> RoutePlanner:
    """The planner for one scene: :class:`HabitatFloorPlan` or the built-in :class:`FloorPlan`."""
    if resolve_route_planner(choice) == "habitat":
        return HabitatFloorPlan(scene, config)
    return FloorPlan(scene, config)
