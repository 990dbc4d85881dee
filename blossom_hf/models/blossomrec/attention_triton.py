"""Fused Triton backend (work in progress: registers nothing yet)."""
