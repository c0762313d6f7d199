"""What widening a pretrained transformer for DA-VAE latents does, whatever its architecture:
build the widened model on the meta device, carry every pretrained tensor over except those of
the widened layers, and check that nothing was left behind."""

from __future__ import annotations

from typing import Sequence

import torch


def check_arguments(owner: str, transformer, base_cls: type, widened_cls: type, detail_channels: int, init: str,
                    order: str) -> None:
    """What every widening checks first: a ``base_cls`` model not widened already, a positive
    detail channel count, a known init and channel order."""
    from .. import _validate
    from ..nn._init import check_channels, check_init

    if not isinstance(transformer, base_cls):
        name = base_cls.__name__
        article = "an" if name.startswith(("SD", "A", "E", "I", "O", "U")) else "a"  # "an SD3...", "a Flux..."
        raise TypeError(f"{owner}: 'transformer' must be {article} {name}, got {type(transformer).__name__}")
    if isinstance(transformer, widened_cls):
        raise ValueError(f"{owner}: 'transformer' is already a {widened_cls.__name__}")
    check_channels(owner, "detail_channels", detail_channels)
    check_init(owner, init)
    _validate.order_flag(owner, order)


def carry_over(new: torch.nn.Module, pretrained: torch.nn.Module, widened: Sequence[str], share_weights: bool,
               owner: str) -> None:
    """Load ``pretrained``'s state into ``new`` (built on the meta device) except the keys under
    the ``widened`` prefixes, cloned (or shared with ``share_weights``). Raises naming the keys
    when the two layouts differ elsewhere."""
    prefixes = tuple(widened)
    state = {k: (v if share_weights else v.clone()) for k, v in pretrained.state_dict().items()
             if not k.startswith(prefixes)}
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    stray = unexpected + [k for k in missing if not k.startswith(prefixes)]
    if stray:
        raise RuntimeError(f"{owner}: the pretrained state dict does not match the widened model's layout outside "
                           f"{', '.join(p.rstrip('.') for p in prefixes)}: {stray[:5]}")


def check_complete(new: torch.nn.Module, owner: str) -> None:
    """Every parameter and buffer of ``new`` is real (none left on the meta device)."""
    leftover = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{owner}: tensors not carried over from the pretrained model: {leftover}")


def widen(pretrained: torch.nn.Module, new_cls, config: dict, widened: dict, share_weights: bool,
          owner: str) -> torch.nn.Module:
    """``new_cls(**config)`` built on the meta device, ``pretrained``'s tensors carried over except
    those of the ``widened`` modules (name -> the widened module, already built from the
    pretrained one), checked complete; gradient checkpointing and train/eval mode as the input's."""
    with torch.device("meta"):
        new = new_cls(**config)
    carry_over(new, pretrained, tuple(f"{name}." for name in widened), share_weights, owner)
    for name, module in widened.items():
        setattr(new, name, module)
    check_complete(new, owner)
    new.gradient_checkpointing = pretrained.gradient_checkpointing
    return new.train(pretrained.training)
