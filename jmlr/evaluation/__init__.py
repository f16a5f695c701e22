"""Evaluation: accuracy with retrieval in the loop, UMLS-F of rationales, reports."""
