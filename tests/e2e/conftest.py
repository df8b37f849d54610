"""The e2e tier's long script runs that start before the tests that read them.

The tests run one at a time on one thread (tests/conftest.py), so on a 2-core machine one core
is mostly idle. ``pipeline.py --quick`` (about two minutes, its two workers side by side at
first, then MobileNetV2's alone) is therefore started as a process when the tier's first test
starts, and ``tests/e2e/test_pipeline.py``'s ``quick_run`` waits for it: the tests before it run
meanwhile. It is started only where a test that reads it was collected.
"""

import pytest

from tests.support.cli import Background


@pytest.fixture(scope="session", autouse=True)
def early_runs(request, tmp_path_factory):
    """The background runs, by name (``"pipeline"``); each killed at the end if still running."""
    wanted = {item.path.name for item in request.session.items
              if "quick_run" in getattr(item, "fixturenames", ())}
    runs = {}
    if "test_pipeline.py" in wanted:
        folder = tmp_path_factory.mktemp("pipeline")
        runs["pipeline"] = Background("scripts/pipeline.py", "--quick", "--out", folder / "out",
                                      folder=folder)
    yield runs
    for run in runs.values():
        run.stop()
