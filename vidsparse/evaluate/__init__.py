"""Evaluation of a patched pipeline against the dense one: quality, speed, reports."""
