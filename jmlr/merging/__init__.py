"""Merging experts (``jmlr merge``): expert runs' generators and retrievers combined into one
pair with mergekit's methods. ``config`` is the ``merge`` config section (no torch),
``methods`` is the only importer of mergekit, ``run`` folds, merges, writes and documents."""
