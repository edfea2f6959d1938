"""Wrapping a diffusers ``Attention`` module's processor for one U-Net call, and calling the user's processor.

A pruning unit never keeps its processor installed: :class:`CallWrapper` goes in front of whatever processor the
module has when a pruning call starts (``wrap``) and is taken out when the call ends (``unwrap``). So processors the
user installs at any time (``set_attn_processor``, ``enable_attention_slicing``, ``fuse_qkv_projections``, PAG's
per-call processors, IP-Adapter) are the ones a unit wraps, ``unet.attn_processors`` never shows a pruning
processor, and there is nothing to restore on removal.
"""

from __future__ import annotations

from torch import nn


def plain_processor_types() -> tuple[type, ...]:
    """Processors whose self-attention is exactly ``softmax(q k^T * scale) v`` over the module's own projections,
    which AT-EDM's fused attention reproduces while also returning the map."""
    from diffusers.models import attention_processor as ap

    return (ap.AttnProcessor, ap.AttnProcessor2_0, ap.SlicedAttnProcessor, ap.FusedAttnProcessor2_0,
            ap.XFormersAttnProcessor)


def is_fused_processor(processor) -> bool:
    """Whether ``processor`` projects with the module's fused ``to_qkv`` (``fuse_qkv_projections()``)."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    return type(processor) is FusedAttnProcessor2_0


def set_processor(attn: nn.Module, processor) -> None:
    """``attn.processor = processor``, also when one of the two is an ``nn.Module`` (kept in ``_modules``)."""
    if isinstance(attn.processor, nn.Module) and not isinstance(processor, nn.Module):
        del attn._modules["processor"]
    attn.processor = processor


def call_processor(processor, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
    """Call a diffusers processor with keyword arguments only, ``temb`` only when given: processors differ in what
    they accept positionally (``SlicedAttnProcessor`` takes no ``temb`` at all)."""
    extra = {} if temb is None else {"temb": temb}
    return processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                     attention_mask=attention_mask, **extra)


class CallWrapper:
    """Base of a pruning unit's ``attn1`` processor: holds the user's processor (``inner``) during one call."""

    def __init__(self) -> None:
        self.inner = None  # the user's processor while wrapped

    def wrap(self, attn: nn.Module) -> None:
        if attn.processor is not self:
            self.inner = attn.processor
            set_processor(attn, self)

    def unwrap(self, attn: nn.Module) -> None:
        if attn.processor is self:
            set_processor(attn, self.inner)
        self.inner = None
