"""Deprecated path (kdbench 0.1): the plugin Protocols and attack inputs now live in :mod:`kdbench.api`."""

from kdbench.core.deprecation import moved_to_api

__getattr__ = moved_to_api(__name__, ["Attack", "AttackInputs", "Defense", "Distiller", "Need", "NoParams", "Plugin"])
