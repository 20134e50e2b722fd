"""A local Azure-compatible chat-completions server for --simulate, tests and benchmarks."""

from .server import FAULTS, SimConfig, Simulator, serve, serve_in_thread

__all__ = ["FAULTS", "SimConfig", "Simulator", "serve", "serve_in_thread"]
