"""The sampling loop's path: schedule, guidance, window plan, per-frame audio windows, routing masks, the long-video loop, colour."""
