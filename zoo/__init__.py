"""Adapter Zoo: one shared 4-bit base model, many QLoRA task adapters, a router in front."""

__version__ = "0.1.0"
