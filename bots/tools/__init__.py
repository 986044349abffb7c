"""Tools that ship with Parley. Each module's top-level `Tool` objects are its tools."""

SHIPPED_TOOL_MODULES: tuple[str, ...] = ("bots.tools.builtin",)
"""Modules the bootstrap loads into the registry before PARLEY_TOOL_MODULES."""

__all__ = ["SHIPPED_TOOL_MODULES"]
