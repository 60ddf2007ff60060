"""Finding the stages of a classifier body (shared by BiDO and TL-DMI).

A *stage* is a direct child with parameters of the body's main container: the body itself when
it is a ``Sequential`` (``small-cnn``, ``small-resnet``), otherwise the single child wrapping the
real network (``body.net`` of the torchvision ResNets and Inception-v3), whose children are
taken. Stand-alone normalisation layers (e.g. a ResNet's ``bn1``) and auxiliary classifiers
(Inception's ``AuxLogits``) are not stages. Stages are listed in registration order, which is the
order of the forward pass for every architecture this project ships.
"""

from __future__ import annotations

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def body_stages(body: nn.Module, prefix: str = "body") -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of each stage of ``body``; names are relative to the classifier."""
    container, name = body, prefix
    while not isinstance(container, nn.Sequential):
        with_params = [(n, c) for n, c in container.named_children() if _has_params(c)]
        if len(with_params) != 1 or not list(with_params[0][1].children()):
            break
        child_name, container = with_params[0]
        name = f"{name}.{child_name}"
    stages = []
    for child_name, child in container.named_children():
        if not _has_params(child) or isinstance(child, _NORMS) or "aux" in child_name.lower():
            continue
        stages.append((f"{name}.{child_name}", child))
    return stages


def under(name: str, prefixes: list[str]) -> bool:
    """Whether the module or parameter ``name`` lies under one of the module names ``prefixes``."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)
