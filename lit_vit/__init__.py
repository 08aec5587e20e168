"""lit-vit: watch what a Vision Transformer attends to while it learns."""

__version__ = "0.1.0"
