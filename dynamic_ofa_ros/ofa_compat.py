"""The one place that imports the ``ofa`` package (Once-for-All, PyPI ``ofa``).

``ofa`` declares only ``torch`` as a dependency but imports more at module
level. What we do about each, without touching site-packages:

* ``gdown`` (imported by ``ofa.model_zoo`` for Google-Drive hosted ResNet
  weights, which we never use): when it is not installed, a tiny stand-in
  module is registered whose ``download`` raises :class:`ModelSourceError`.
  ``ofa.model_zoo`` then imports and works for the MobileNetV3 super-networks.
* ``torchvision`` and ``Pillow`` (imported by ``ofa.utils.my_dataloader``):
  both are dependencies of this package (torchvision itself requires Pillow);
  if they are missing, :func:`import_ofa` raises :class:`ModelSourceError`
  saying what to install.
* ``yaml`` (``yaml.load`` without a Loader): only in ofa's latency look-up
  code, which we never import.

The OFA MobileNetV3 super-network has a fixed stem, a fixed first block
(``blocks[0]``) and 20 elastic blocks (``blocks[1..20]``) in 5 stages of 4. Our
``ks``/``e`` lists index the 20 elastic blocks, exactly like ofa's
``set_active_subnet(ks=[20], e=[20], d=[5])``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from dynamic_ofa_ros.arch import SUPERNET_NAME, SubnetConfig
from dynamic_ofa_ros.errors import ModelSourceError

if TYPE_CHECKING:  # importing this module needs no torch; building a network imports ofa (and torch)
    from torch import nn

__all__ = [
    "OFA_ZOO_URL_BASE",
    "build_ofa_mbv3",
    "dynamic_op_module",
    "import_ofa",
    "is_ofa_mbv3",
    "make_divisible",
    "ofa_zoo_net",
    "set_active",
]

#: Where ``ofa.model_zoo.ofa_net`` downloads the MobileNetV3 super-network weights from.
OFA_ZOO_URL_BASE = "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/"

_ofa_modules: dict[str, Any] = {}


def _install_gdown_stand_in() -> None:
    try:
        importlib.import_module("gdown")
        return
    except ImportError:
        pass
    stand_in = types.ModuleType("gdown")

    def download(*_args: object, **_kwargs: object) -> None:
        raise ModelSourceError(
            "ofa tried to download through gdown (Google Drive), which is not installed; "
            "only the ofa_mbv3_* super-networks are supported here: use one of those, or pip install gdown"
        )

    stand_in.download = download  # type: ignore[attr-defined]
    stand_in.__dict__["__dofa_stand_in__"] = True
    sys.modules["gdown"] = stand_in


def import_ofa() -> dict[str, Any]:
    """Import what we use from ``ofa``; returns ``{"OFAMobileNetV3", "model_zoo", "make_divisible"}``."""
    if _ofa_modules:
        return _ofa_modules
    _install_gdown_stand_in()
    try:
        from ofa import model_zoo
        from ofa.imagenet_classification.elastic_nn.networks import (
            OFAMobileNetV3,
        )
        from ofa.utils import make_divisible as ofa_make_divisible
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise ModelSourceError(
            f"cannot import the 'ofa' package ({missing} is missing): "
            "pip install ofa torchvision pillow (ofa imports torchvision and Pillow without declaring them)"
        ) from exc
    _ofa_modules.update(
        {"OFAMobileNetV3": OFAMobileNetV3, "model_zoo": model_zoo, "make_divisible": ofa_make_divisible}
    )
    return _ofa_modules


def make_divisible(value: float, divisor: int = 8) -> int:
    """OFA's channel rounding (``ofa.utils.make_divisible``)."""
    return int(import_ofa()["make_divisible"](value, divisor))


def build_ofa_mbv3(
    *,
    n_classes: int = 1000,
    width_mult: float = 1.2,
    ks_list: tuple[int, ...] = (3, 5, 7),
    expand_ratio_list: tuple[int, ...] = (3, 4, 6),
    depth_list: tuple[int, ...] = (2, 3, 4),
    dropout_rate: float = 0.0,
) -> nn.Module:
    """A randomly initialised ``OFAMobileNetV3`` (the ``ofa_mbv3_d234_e346_k357_w1.2`` layout by default)."""
    cls = import_ofa()["OFAMobileNetV3"]
    net: nn.Module = cls(
        n_classes=int(n_classes),
        dropout_rate=float(dropout_rate),
        width_mult=float(width_mult),
        ks_list=list(ks_list),
        expand_ratio_list=list(expand_ratio_list),
        depth_list=list(depth_list),
    )
    net.eval()
    return net


def dynamic_op_module() -> types.ModuleType:
    """``ofa``'s elastic dynamic-op module; its global ``F`` is the functional API its layers call.

    Training swaps that ``F`` to compute 1x1 convolutions as matmuls
    (``offline_tools.training.model.pointwise_as_matmul``).
    """
    import_ofa()
    return importlib.import_module("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")


def layer_classes() -> types.SimpleNamespace:
    """OFA's static layer classes, as an extracted sub-network is built from them.

    ``ConvLayer``, ``IdentityLayer``, ``LinearLayer``, ``MBConvLayer``, ``ResidualBlock`` and
    ``MyGlobalAvgPool2d``: the per-operator latency profiler builds each operator with these
    (``offline_tools.latency.runners``).
    """
    import_ofa()
    layers = importlib.import_module("ofa.utils.layers")
    utils = importlib.import_module("ofa.utils")
    return types.SimpleNamespace(
        ConvLayer=layers.ConvLayer,
        IdentityLayer=layers.IdentityLayer,
        LinearLayer=layers.LinearLayer,
        MBConvLayer=layers.MBConvLayer,
        ResidualBlock=layers.ResidualBlock,
        MyGlobalAvgPool2d=utils.MyGlobalAvgPool2d,
    )


def ofa_zoo_net(net_id: str = SUPERNET_NAME) -> nn.Module:
    """The architecture of ``ofa.model_zoo.ofa_net(net_id)`` without its weights (``pretrained=False``)."""
    zoo = import_ofa()["model_zoo"]
    try:
        net: nn.Module = zoo.ofa_net(net_id, pretrained=False)
    except ValueError as exc:
        raise ModelSourceError(f"ofa.model_zoo does not know {net_id!r}: {exc}") from exc
    net.eval()
    return net


def is_ofa_mbv3(module: object) -> bool:
    """Whether ``module`` is an ``OFAMobileNetV3`` super-network."""
    return isinstance(module, import_ofa()["OFAMobileNetV3"])


def set_active(net: nn.Module, config: SubnetConfig) -> None:
    """``net.set_active_subnet(ks, e, d)`` for ``config`` (resolution is the caller's business)."""
    net.set_active_subnet(**config.ofa_kwargs())  # type: ignore[operator]


def supernet_space_lists(net: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(ks_list, expand_ratio_list, depth_list)`` of an OFAMobileNetV3."""
    ofa_net: Any = net
    return (
        tuple(int(v) for v in ofa_net.ks_list),
        tuple(int(v) for v in ofa_net.expand_ratio_list),
        tuple(int(v) for v in ofa_net.depth_list),
    )
