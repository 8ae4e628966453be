"""spikewire runtime: the fixed-point core binding, front end, pipeline and CLI."""

__version__ = "0.1.0"
