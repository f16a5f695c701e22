"""Evaluation: accuracy with retrieval in the loop, UMLS-F of rationales, reports."""

import logging

# nmslib (the KB's alias index; scispaCy imports it too) logs 65 "Registering at the factory"
# lines at INFO while it is being imported, so its logger is quieted here, before any module
# of this package can import it; setting the level after that import silences nothing.
logging.getLogger("nmslib").setLevel(logging.WARNING)
