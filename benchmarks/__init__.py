"""Speed and memory benchmarks of jmlr (see README.md). Run as ``python -m benchmarks.<name>``."""

import os
import sys

# Offline always; tables rather than progress bars when a benchmark runs as a program (while
# ``python -m`` imports this package, ``sys.argv[0]`` is "-m"). Set here, before anything
# imports tqdm or transformers: both read these when imported.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                     ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)
if sys.argv[:1] == ["-m"]:
    os.environ.setdefault("TQDM_DISABLE", "1")
