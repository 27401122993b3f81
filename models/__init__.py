"""The networks: Wan2.1 I2V DiT with InfiniteTalk/MultiTalk audio blocks, umT5, wav2vec2 at 25 fps.

torch + einops (+ transformers) only: no ComfyUI imports, no device moves."""
