"""Shared test setup.

torchvision must import on the CPU-only torch (see torchvision_compat). The tests use tiny models,
where a second thread buys nothing and, on a loaded 2-core machine, can make a forward pass a
hundred times slower; one thread keeps them fast and their timing stable. The environment
variable is set before torch starts so subprocesses (scripts, torchrun) inherit it.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import torchvision_compat  # noqa: E402, F401

torch.set_num_threads(1)


# The suite's tiers are its folders. ``make test`` (and CI) runs all of them; ``make test-fast``
# runs ``tests/unit`` alone (well under a minute on 2 cores), for feedback while editing the engine.
# ``tests/e2e``: the command-line runs, launchers, pipeline, benchmarks, GPU check and torchrun.
# ``tests/families``: whole networks of every registered family, at several sizes (the
# conformance suite and each family's own checks). ``tests/support`` holds the helpers, which
# are not collected. Each tier is also a marker, so ``-m "not e2e"`` works as well.
TIERS = ("e2e", "families")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: command-line runs (tests/e2e)")
    config.addinivalue_line("markers", "families: whole networks of every family (tests/families)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)
