"""Training, evaluation and export of harken's detector, plus the shipped model.

Importing this package does not import torch; only `models.net`, `models.train` and
`models.export` do, and they need the `[train]` extra.
"""
