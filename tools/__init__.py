"""Offline tools for spikewire: datasets, surrogate-gradient training, evaluation, export.

Only this package imports torch (as the optional extra ``spikewire[train]``);
the runtime never imports ``tools``.
"""
