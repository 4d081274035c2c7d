"""Shared test set-up.

- Triton runs in its CPU interpreter when there is no GPU. TRITON_INTERPRET must be set before any
  @triton.jit function is defined, hence here, before the package is imported.
- Inputs are fresh random draws every run: the run's base seed is printed in pytest's header and after the
  summary (`make test` runs -q, which has no header); a failure is reproduced with VIDSPARSE_TEST_SEED=<seed>.
  Each test is seeded from the base seed and its own name.
"""

import os
import random
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

BASE_SEED = int(os.environ.get("VIDSPARSE_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config: pytest.Config) -> str:
    return f"vidsparse: VIDSPARSE_TEST_SEED={BASE_SEED}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Also at the end: `make test` runs pytest -q, which prints no header, and a failure needs the seed.
    terminalreporter.write_line(f"vidsparse: VIDSPARSE_TEST_SEED={BASE_SEED}")


@pytest.fixture(autouse=True)
def _seeded(request: pytest.FixtureRequest) -> None:
    torch.manual_seed((BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31))
