"""Make ``import torchvision`` work on a CPU-only torch.

The torchvision 0.28.0 wheel ships a compiled extension built against CUDA torch. With the CPU
build of torch 2.13.0 that extension fails to load, and torchvision's meta registrations then
raise ``RuntimeError: operator torchvision::nms does not exist`` at import time. Registering the
two operator *schemas* it looks up (``nms`` and ``qnms``) lets the import finish; models,
transforms and datasets work, only the compiled ops (``torchvision.ops.nms`` ...) stay unusable,
and nothing in this repository calls them.

The fix is applied only when the normal import fails with exactly that error, so on a GPU machine
with a matching CUDA torch nothing is changed. Import this module before torchvision::

    import torchvision_compat  # noqa: F401
    import torchvision
"""

import sys

import torch

_MISSING_OP = "torchvision::nms does not exist"
_library = None  # the registration lives as long as this object does


def _register_missing_schemas() -> None:
    global _library
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


try:
    import torchvision  # noqa: F401
except RuntimeError as error:
    if _MISSING_OP not in str(error):
        raise
    for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
        del sys.modules[name]
    _register_missing_schemas()
    import torchvision  # noqa: F401
