"""The standard preprocessing for ImageNet and CIFAR-10, in one place.

Pruning, fine-tuning and evaluation must preprocess identically, otherwise accuracies measured by
one script do not carry over to another; so every script gets its transforms from here.
"""

import torchvision_compat  # noqa: F401  (must precede torchvision on a CPU-only torch)
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training set (the std is the true pixel std; some code
# bases use (0.2023, 0.1994, 0.2010), an often-copied miscomputation; the difference is harmless).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def imagenet_transform(image_size: int = 224, train: bool = True) -> T.Compose:
    """Train: RandomResizedCrop + flip; eval: resize to size*256/224 then center crop."""
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
        )
    return T.Compose(
        [
            T.Resize(int(image_size * 256 / 224)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            normalize,
        ]
    )


def cifar10_transform(image_size: int = 32, train: bool = True) -> T.Compose:
    """Train: RandomCrop(size, padding=size/8) + flip; eval: normalize only.

    CIFAR images are 32x32; any other ``image_size`` first resizes them (e.g. to feed a network
    that expects larger inputs), which keeps the padding at the same fraction of the image.
    """
    steps: list = [] if image_size == 32 else [T.Resize(image_size)]
    if train:
        steps += [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    return T.Compose(steps)
