"""Placeholder until the Triton backend lands (issue #2)."""


def triton_available() -> bool:
    return False
