"""Shipped spikewire models, one folder each (model file ``*.swm`` + ``MODEL_CARD.md``).

Resolved by name with ``spikewire.model.load("kws-digits")``; installed as package data.
"""
