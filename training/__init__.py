"""Training code for both networks, run from the repository root as ``python -m training.<module>``
(or ``torchrun ... -m training.<module>``).

* ``train_interpolation`` / ``train_segmentation``: the two trainers (step, validation, hooks, ``main``);
* ``loop``: what both share: command line, run folder (``run.json``), LR plateau, time budget, epoch loop;
* ``interp_data`` / ``seg_data``: their training and validation data; ``cache``: cached preprocessing and
  patch sampling; ``loading``: seeded DataLoader streams; ``models``: networks from configs;
  ``export``: safetensors + model card; ``common``: distributed, checkpoints, seeds, mixed precision;
* ``evaluate``: the paper's segmentation metrics on prediction folders.
"""
