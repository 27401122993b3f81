"""File on disk -> module: reading, recognition by keys and shapes, key maps, quanto layers, LoRA."""
