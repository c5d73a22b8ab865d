"""Which timm networks are plain vision transformers: students and pretrain treat them apart.

A plain ViT gives one feature map at its patch stride (16) where a CNN gives four stages at strides
4-32: smp builds it under DPT only (students), and pretrain puts a simple feature pyramid on it
(``pretrain/vit.py``). Both read the data set's size through timm's ``dynamic_img_size``.
"""

from __future__ import annotations

# timm modules whose models are single-scale vision transformers
VIT_MODULES = ("vision_transformer", "deit", "eva", "beit", "vision_transformer_relpos", "vision_transformer_sam")


def is_vision_transformer(name: str) -> bool:
    """True for a timm model name (or an smp ``tu-<name>`` encoder) of a plain vision transformer."""
    import timm

    name = str(name)
    name = name[3:] if name.startswith("tu-") else name
    return bool(timm.models.is_model(name)) and timm.models.is_model_in_modules(name, list(VIT_MODULES))
