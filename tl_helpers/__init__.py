"""tl_helpers: the small helper package of the transfer-learning course.

One module per idea, each importable on its own:

- ``tl_helpers.runtime``: device, seeding, the cache folder
- ``tl_helpers.data``: the Clipart dataset, splits, transforms, loaders, cached features
- ``tl_helpers.models``: loading pretrained models offline; freezing, heads, parameter groups
- ``tl_helpers.train``: the training loop (``fit``), phase 1 on cached features, checkpoints, LR range test
- ``tl_helpers.evaluate``: predictions and metrics (accuracy, calibration, confidence intervals)
- ``tl_helpers.plots``: figures (matplotlib)
- ``tl_helpers.checks``: instant feedback on the exercises
- ``tl_helpers.widgets``: interactive explorers (ipywidgets), each with a static twin

Every helper is shown as plain PyTorch in a chapter before it is used.
"""

__version__ = "0.1.0"
