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


# The suite's tiers, by file. ``make test`` (and CI) runs all of them; ``make test-fast`` runs
# only the unmarked unit tests (well under a minute on 2 cores), for feedback while editing the
# engine. ``e2e``: the command-line runs, launchers, pipeline, benchmarks, GPU check and
# torchrun. ``families``: whole networks of every registered family, at several sizes (the
# conformance suite and each family's own checks).
E2E = {
    "test_bench_select.py", "test_bench_units.py", "test_device_audit.py",
    "test_entry_arguments.py", "test_fast_cli.py", "test_fast_distributed.py",
    "test_finetune.py", "test_gpu_check.py", "test_launchers.py", "test_mnist_two_layer.py",
    "test_pipeline.py", "test_prune_cli.py", "test_readme_commands.py", "test_reliability.py",
    "test_run_folders.py", "test_toy_two_layer.py",
}
FAMILIES = {
    "test_conformance.py", "test_layouts.py", "test_mobilenet_v3.py", "test_proxylessnas.py",
    "test_prune_custom_model.py",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: command-line runs (make test only)")
    config.addinivalue_line("markers", "families: whole networks of every family (make test only)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in E2E:
            item.add_marker("e2e")
        elif name in FAMILIES:
            item.add_marker("families")
