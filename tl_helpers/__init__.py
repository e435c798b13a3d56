"""tl_helpers: the small helper package of the transfer-learning course.

One module per idea, each importable on its own:

- ``tl_helpers.runtime``: device, seeding, the cache folder
- ``tl_helpers.data``: the Clipart dataset, its fixed split and cross-validation folds, transforms, loaders, cached features
- ``tl_helpers.groups``: near-duplicate groups and splits that keep each group in one part
- ``tl_helpers.models``: loading pretrained models offline
- ``tl_helpers.surgery``: stages, freezing, heads, parameter groups
- ``tl_helpers.train``: the training loop (``fit``) and its ``History``
- ``tl_helpers.checkpoints``: checkpoints that know their settings, resume
- ``tl_helpers.lr_finder``: the learning-rate range test
- ``tl_helpers.recipe``: the course's recipe (``Recipe``, phase 1 on cached features, ``two_phase``)
- ``tl_helpers.learning_curve``: the labels-per-class protocol (draws, intervals, paired gaps)
- ``tl_helpers.paired_tests``: two models on the same test images (McNemar's test, paired bootstrap)
- ``tl_helpers.evaluate``: predictions and metrics (accuracy, calibration), intervals (``Interval``) and the verdict words
- ``tl_helpers.plots``: figures (matplotlib)
- ``tl_helpers.checks``: instant feedback on the exercises
- ``tl_helpers.widgets``: interactive explorers (ipywidgets), each with a static twin
- ``tl_helpers.benchmark_results``: the committed benchmark results and the words they allow
- ``tl_helpers.imagefolder``: scanning a folder of your own images, splits without a manifest
- ``tl_helpers.finetuned``: the recipe in one call (``finetune``), self-describing checkpoints, ``predict``
- ``tl_helpers.export``: TorchScript and ONNX export, checked against PyTorch
- ``tl_helpers.cli``: the command line, ``python -m tl_helpers finetune|predict|export|evaluate``
- ``tl_helpers.arrays``: small grayscale array datasets (Fashion-MNIST subset, MNIST digits)
- ``tl_helpers.regularise``: regularisation towards the source weights (L2-SP), distance from them
- ``tl_helpers.small_cnn``: a small CNN, the transfer of its first k layers, one training rule for every arm
- ``tl_helpers.domains`` and ``tl_helpers.adaptation``: domain pairs, and AdaBN, CORAL, MMD, DANN
- ``tl_helpers.text``: the offline MiniLM text encoder, the WordNet text set, tokenised loaders
- ``tl_helpers.segmentation``: multi-scale encoder maps, a light U-Net-style decoder, Dice and IoU, boxes
- ``tl_helpers.distributed``: the recipe under torchrun and DDP, snapshots and resume
- ``tl_helpers.distributed_main``: the program torchrun starts, ``torchrun ... -m tl_helpers.distributed_main FOLDER``
- ``tl_helpers.files``: atomic writes (checkpoints, caches, results)

Every helper is shown as plain PyTorch in a chapter before it is used.
"""

__version__ = "0.1.0"
