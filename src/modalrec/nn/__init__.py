"""Reusable layers: dense blocks (`layers`), sequence layers (`sequence`), the item encoder."""

from .item_encoder import ItemEncoder
from .layers import MLP, Activation, CrossNetV2, Dice, make_activation
from .sequence import CausalTransformerBlock, TargetAttention, masked_mean

__all__ = [
    "MLP",
    "Activation",
    "CausalTransformerBlock",
    "CrossNetV2",
    "Dice",
    "ItemEncoder",
    "TargetAttention",
    "make_activation",
    "masked_mean",
]
