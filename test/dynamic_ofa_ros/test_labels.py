"""ImageNet class names: the shipped list is torchvision's and agrees with the Imagenette mapping."""

from __future__ import annotations

from dynamic_ofa_ros.labels import NUM_CLASSES, imagenet_labels, label


def test_imagenet_labels() -> None:
    names = imagenet_labels()
    assert len(names) == NUM_CLASSES == 1000
    assert imagenet_labels() is names  # loaded once
    # the Imagenette wnids' ImageNet indices (see shared/README.md)
    expected = {
        0: "tench",
        217: "English springer",
        482: "cassette player",
        491: "chain saw",
        701: "parachute",
    }
    for index, name in expected.items():
        assert label(index) == name
    assert label(1000) == "class 1000" and label(-1) == "class -1"


def test_shipped_names_are_torchvisions() -> None:
    from torchvision.models import MobileNet_V3_Large_Weights

    assert imagenet_labels() == tuple(MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"])
