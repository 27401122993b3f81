"""Real-host tests: a ComfyUI 0.3.75 process with the pack linked in (see server.py)."""
