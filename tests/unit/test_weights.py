"""Tests for models.weights: every checkpoint form round-trips, mismatches are refused by name,
and the enum path never touches the network (downloads are simulated to fail)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

import torchvision_compat  # noqa: F401
import torchvision
from models import mobilenet_v2
from models import weights as W
from tests.support.nets import randomize_state

INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT)


def _mobilenet(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    return torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# A minimal re-implementation of d-li14/mobilenetv2.pytorch's models/imagenet/mobilenetv2.py:
# same class structure and attribute names (features / conv / avgpool / classifier, blocks with a
# flat `conv` Sequential), hence the same state_dict keys and channel rounding.
# ---------------------------------------------------------------------------------------------


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    ]


class DLi14InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else _conv_bn_relu6(inp, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


class DLi14MobileNetV2(nn.Module):
    CFGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
            [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]  # fmt: skip

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = _divisible(32 * width_mult)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, channels, 3, 2))]
        for t, c, n, s in self.CFGS:
            out = _divisible(c * width_mult)
            for i in range(n):
                layers.append(DLi14InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        self.features = nn.Sequential(*layers)
        last = _divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv = nn.Sequential(*_conv_bn_relu6(channels, last, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(x.view(x.size(0), -1))


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["plain", "state_dict", "module", "model_and_args"])
def test_local_file_forms_round_trip(tmp_path: Path, form: str) -> None:
    source = randomize_state(_mobilenet(0.5, num_classes=10), seed=1)
    state = source.state_dict()
    if form == "state_dict":
        payload = {"epoch": 3, "state_dict": state, "best_prec1": 12.5}
    elif form == "module":
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif form == "model_and_args":  # torchvision reference-script checkpoint, args included
        import argparse

        payload = {"model": state, "epoch": 1, "args": argparse.Namespace(lr=0.1)}
    else:
        payload = state
    path = tmp_path / "weights.pth"
    torch.save(payload, path)

    target = _mobilenet(0.5, num_classes=10)
    description = W.load_pretrained(target, "mobilenet_v2", str(path))

    assert torch.equal(_outputs(target), _outputs(source))
    assert str(path) in description and "width 0.5" in description
    if form == "module":
        assert "'module.' prefixes" in description


def test_resnet34_round_trip(tmp_path: Path) -> None:
    source = randomize_state(torchvision.models.resnet34(num_classes=10), seed=2)
    path = tmp_path / "r34.pth"
    torch.save(source.state_dict(), path)
    target = torchvision.models.resnet34(num_classes=10)
    W.load_pretrained(target, "resnet34", path)
    assert torch.equal(_outputs(target), _outputs(source))


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5])
def test_dli14_checkpoint_maps_onto_torchvision(tmp_path: Path, width: float) -> None:
    reference = randomize_state(DLi14MobileNetV2(width_mult=width), seed=3)
    state = reference.state_dict()
    assert "conv.0.weight" in state and "classifier.weight" in state  # real d-li14 key names
    assert "features.1.conv.4.running_mean" in state and "features.2.conv.7.weight" in state
    path = tmp_path / f"mobilenetv2_{width}.pth"
    torch.save(state, path)

    target = _mobilenet(width)
    description = W.load_pretrained(target, "mobilenet_v2", path)

    assert "d-li14" in description
    torch.testing.assert_close(_outputs(target), _outputs(reference), atol=1e-5, rtol=1e-5)


def test_dli14_mapping_is_a_bijection_onto_torchvision_keys() -> None:
    mapped = mobilenet_v2.map_dli14(DLi14MobileNetV2().state_dict())
    assert set(mapped) == set(_mobilenet().state_dict())


def test_dli14_checkpoint_wrapped_by_dataparallel(tmp_path: Path) -> None:
    reference = randomize_state(DLi14MobileNetV2(width_mult=0.5), seed=4)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    target = _mobilenet(0.5)
    W.load_pretrained(target, "mobilenet_v2", path)
    torch.testing.assert_close(_outputs(target), _outputs(reference), atol=1e-5, rtol=1e-5)


def test_legacy_serialization_format(tmp_path: Path) -> None:
    """d-li14's checkpoints date from PyTorch 1.0, before the zip format; weights_only reads
    the old format too."""
    reference = randomize_state(DLi14MobileNetV2(width_mult=0.5), seed=8)
    path = tmp_path / "legacy.pth"
    torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
    target = _mobilenet(0.5)
    W.load_pretrained(target, "mobilenet_v2", path)
    torch.testing.assert_close(_outputs(target), _outputs(reference), atol=1e-5, rtol=1e-5)


class _NotATensor:
    pass


def test_file_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    payload = {"state_dict": _mobilenet(0.5).state_dict(), "extra": _NotATensor()}
    torch.save(payload, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        W.load_pretrained(_mobilenet(0.5), "mobilenet_v2", tmp_path / "pickled.pth")


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    source = randomize_state(_mobilenet(0.5), seed=5)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    target = _mobilenet(0.5)
    W.load_pretrained(target, "mobilenet_v2", tmp_path / "old.pth")
    assert torch.equal(_outputs(target), _outputs(source))


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    model = _mobilenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        W.load_pretrained(model, "mobilenet_v2", tmp_path / "r34.pth")
    message = str(info.value)
    assert "mobilenet_v2" in message and "width 1.0" in message
    assert "missing in file" in message and "features.0.0.weight" in message
    assert "unexpected in file" in message and "layer1.0.conv1.weight" in message
    assert "more" in message  # long lists are truncated with a count
    assert "another architecture" in message
    # nothing was copied before the refusal
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dli14", [False, True], ids=["torchvision", "d-li14"])
def test_wrong_width_is_refused(tmp_path: Path, dli14: bool) -> None:
    source = DLi14MobileNetV2(width_mult=0.5) if dli14 else _mobilenet(0.5)
    torch.save(source.state_dict(), tmp_path / "w05.pth")
    with pytest.raises(ValueError) as info:
        W.load_pretrained(_mobilenet(1.0), "mobilenet_v2", tmp_path / "w05.pth")
    message = str(info.value)
    assert "width 1.0" in message and "shape mismatches" in message
    assert "features.0.0.weight [32, 3, 3, 3] vs [16, 3, 3, 3]" in message
    assert "the file holds a MobileNetV2 of width 0.5" in message


def test_head_mismatch_refused_unless_allowed(tmp_path: Path) -> None:
    source = randomize_state(_mobilenet(0.5), seed=6)  # 1000 classes
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    target = _mobilenet(0.5, num_classes=10)
    with pytest.raises(ValueError, match="allow_head_mismatch=True"):
        W.load_pretrained(target, "mobilenet_v2", tmp_path / "imagenet.pth")

    head_before = target.classifier[1].weight.clone()
    description = W.load_pretrained(
        target, "mobilenet_v2", tmp_path / "imagenet.pth", allow_head_mismatch=True
    )
    assert "classifier not loaded" in description and "classifier.1.weight" in description
    assert torch.equal(target.classifier[1].weight, head_before)
    assert torch.equal(target.features[5].conv[1][0].weight, source.features[5].conv[1][0].weight)


def test_head_mismatch_does_not_excuse_other_mismatches(tmp_path: Path) -> None:
    torch.save(_mobilenet(0.5).state_dict(), tmp_path / "w05.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        W.load_pretrained(
            _mobilenet(1.0, num_classes=10),
            "mobilenet_v2",
            tmp_path / "w05.pth",
            allow_head_mismatch=True,
        )


def test_non_checkpoint_file_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="no state_dict"):
        W.load_pretrained(_mobilenet(0.5), "mobilenet_v2", tmp_path / "junk.pth")


def test_unknown_arch_and_missing_file() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        W.load_pretrained(_mobilenet(0.5), "vgg16", "IMAGENET1K_V1")
    with pytest.raises(FileNotFoundError, match="no such file"):
        W.load_pretrained(_mobilenet(0.5), "mobilenet_v2", "/nonexistent/weights.pth")


# ---------------------------------------------------------------------------------------------
# torchvision enums, offline
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Empty hub cache and a download function that fails like a machine without network."""
    calls: list[str] = []

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


@pytest.mark.parametrize(
    "arch,spec",
    [
        ("mobilenet_v2", "IMAGENET1K_V1"),
        ("mobilenet_v2", "DEFAULT"),
        ("resnet34", "ResNet34_Weights.IMAGENET1K_V1"),
    ],
)
def test_enum_offline_gives_clear_error(offline: list[str], arch: str, spec: str) -> None:
    model = _mobilenet() if arch == "mobilenet_v2" else torchvision.models.resnet34()
    with pytest.raises(W.PretrainedDownloadError) as info:
        W.load_pretrained(model, arch, spec)
    message = str(info.value)
    assert "could not download" in message and "local path" in message
    assert offline and offline[0].startswith("https://download.pytorch.org/models/")


def test_unknown_enum_name_lists_valid_names(offline: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        W.load_pretrained(torchvision.models.resnet34(), "resnet34", "IMAGENET1K_V2")
    assert "IMAGENET1K_V1" in str(info.value) and "DEFAULT" in str(info.value)
    with pytest.raises(ValueError, match="are not resnet34 weights"):
        W.load_pretrained(
            torchvision.models.resnet34(), "resnet34", "MobileNet_V2_Weights.IMAGENET1K_V1"
        )
    assert not offline  # refused before any download attempt


def test_enum_for_other_mobilenet_width_is_refused(offline: list[str]) -> None:
    with pytest.raises(ValueError, match="only has pretrained MobileNetV2 weights for width 1.0"):
        W.load_pretrained(_mobilenet(0.75), "mobilenet_v2", "IMAGENET1K_V1")
    assert not offline


def test_enum_weights_load_from_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file already in torch.hub's cache is used without any download."""
    from torchvision.models import MobileNet_V2_Weights

    source = randomize_state(_mobilenet(), seed=7)
    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    target = _mobilenet()
    # check_hash compares against the real file's hash prefix only on download, so a cached
    # stand-in file is accepted
    description = W.load_pretrained(target, "mobilenet_v2", "IMAGENET1K_V1")
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in description and "71.878" in description
    assert torch.equal(_outputs(target), _outputs(source))
