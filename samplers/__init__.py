"""Schedule, guidance, window plan, per-window audio, routing masks, the long-video loop, colour."""
