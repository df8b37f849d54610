"""Shared test setup: torchvision must import on the CPU-only torch (see torchvision_compat)."""

import torchvision_compat  # noqa: F401
