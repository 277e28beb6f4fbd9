"""Corral: sandboxes for the work of AI coding agents."""

__version__ = "0.1.0"
