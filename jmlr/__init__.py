"""jmlr: Joint Medical LLM and Retrieval training.

A ColBERT retriever and a Llama generator are fine-tuned together: the generator's loss with
each retrieved passage tells the retriever which passages helped (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
