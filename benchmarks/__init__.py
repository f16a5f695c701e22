"""Speed and memory benchmarks of jmlr (see README.md). Run as ``python -m benchmarks.<name>``."""

import os

# Offline, and tables rather than progress bars. Set before anything imports tqdm or
# transformers: both read these when imported.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                     ("TOKENIZERS_PARALLELISM", "false"), ("TQDM_DISABLE", "1")):
    os.environ.setdefault(_key, _value)
