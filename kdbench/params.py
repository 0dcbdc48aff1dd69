"""Deprecated path (kdbench 0.1): parameter checks for plugins now live in :mod:`kdbench.api`."""

from kdbench.core.deprecation import moved_to_api

__getattr__ = moved_to_api(__name__, ["check_range"])
