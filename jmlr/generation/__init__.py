"""The generator: where its weights come from (``sources``: HF folder, or GGUF converted once
into the cache), loading and saving (``model``), S2-Attn (``attention``), and the one prompt
template with its loss masks (``prompts``).

Submodules are imported on demand so that ``import jmlr`` stays light.
"""
