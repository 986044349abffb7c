"""Parley's composition root: the command line and the wiring of core and adapters."""
