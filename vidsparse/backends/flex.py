"""Placeholder until the FlexAttention backend lands (issue #2)."""
