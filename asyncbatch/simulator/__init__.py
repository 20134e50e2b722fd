"""A local Azure-compatible chat-completions server for --simulate, tests and benchmarks.

It is a witness, not a mirror: its charge per request, its windows and its
headers are its own model of the server (``charge.py``, ``quota.py``), never the
client's policy.
"""

from .charge import Charging
from .helper import simulated
from .server import Simulator, serve, serve_in_thread
from .settings import FAULTS, SimConfig

__all__ = ["FAULTS", "Charging", "SimConfig", "Simulator", "serve", "serve_in_thread", "simulated"]
