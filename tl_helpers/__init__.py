"""tl_helpers: the small helper package of the transfer-learning course.

One module per idea, each importable on its own:

- ``tl_helpers.runtime``: device, seeding, the cache folder
- ``tl_helpers.data``: the Clipart dataset, splits, transforms, loaders, cached features
- ``tl_helpers.models``: loading pretrained models offline, counting parameters
- ``tl_helpers.evaluate``: predictions and metrics
- ``tl_helpers.plots``: figures (matplotlib)

Every helper is shown as plain PyTorch in a chapter before it is used.
"""

__version__ = "0.1.0"
