"""The retriever: a ColBERT model (colbert-ai) over a PLAID index.

- ``colbert``: the only module that imports colbert-ai (compatibility fix, checkpoints,
  the trainable late-interaction scorer);
- ``plaid``: index build and search on colbert-ai's indexer and searcher;
- ``kmeans``: the index's centroids without faiss;
- ``candidates``: ``jmlr index`` / ``jmlr mine``, cached top-N candidates, refresh, metrics;
- ``mining``: partial files, shards and timings that make mining resumable;
- ``folders``: content hashes and atomic replacement of checkpoint and index folders.

Importing this package imports nothing heavy; ``candidates`` imports colbert-ai only when it
builds or searches.
"""
