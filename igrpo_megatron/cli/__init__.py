"""Thin command-line entry points (see setup.py console_scripts)."""
