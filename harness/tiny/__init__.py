"""Tiny random models written in the official file layouts (tests and the try-it demo)."""
