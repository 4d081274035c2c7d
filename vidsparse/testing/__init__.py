"""Test and demo helpers: the head zoo (planted attention structure) and tiny pipelines built from configs."""
