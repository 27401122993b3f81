"""wav2vec2 speech encoder running its transformer at the video frame rate (25 fps).

Numerics follow the official InfiniteTalk implementation (``src/audio_analysis/wav2vec2.py``): the
conv feature encoder runs at its native ~50 Hz, its features are LINEARLY interpolated in time
(``align_corners=True``) to ``seq_len`` video frames BEFORE the feature projection and the
transformer encoder, and the 12 layer outputs (``hidden_states[1:]``) are stacked per frame.

The layers are transformers' own ``Wav2Vec2Model`` pieces (parameter names equal the HF checkpoint
keys without the ``wav2vec2.`` prefix), but the encoder loop is driven here, layer by layer: that
way we never depend on how a transformers version returns hidden states (v5 records them with
hooks) and never request attention maps (the reference forces ``output_attentions=True``, which
breaks SDPA on newer transformers and does not change the outputs).

Long audio: the conv feature encoder holds ~16 MiB of activations per second of audio at full size
(512 channels at 3.2 kHz after the first conv), so it runs in chunks of ``chunk_samples`` (10 s).
Each chunk starts on a multiple of the stack's hop (320 samples) and reads ``conv_overlap_samples``
more (receptive field 400 - hop 320 = 80 samples, 5 ms), which is exactly what its last output
frame needs: the chunked features are the one-pass features, not an approximation. The only
clip-wide operation in the encoder, the first layer's GroupNorm (per-channel statistics over time,
``feat_extract_norm="group"``), gets its statistics from a first pass over the clip. The
transformer then runs once on the whole 25 fps sequence (its attention is global, so chunking it
would change the features); at 25 frames per second it holds well under 1 MiB per second of audio.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from transformers import Wav2Vec2Config
from transformers import Wav2Vec2Model as _HFWav2Vec2Model

# Config entries that only steer outputs/bookkeeping; dropped so they cannot re-enable attention maps.
_IGNORED_CONFIG_KEYS = ("output_attentions", "output_hidden_states", "return_dict", "torchscript",
                        "_attn_implementation_autoset", "transformers_version", "_name_or_path",
                        "attn_implementation", "architectures", "torch_dtype", "dtype")


def make_config(config: dict | Wav2Vec2Config, attn_implementation: str = "sdpa") -> Wav2Vec2Config:
    """A ``Wav2Vec2Config`` from a config.json dict (or a config), with a safe attention backend."""
    if isinstance(config, Wav2Vec2Config):
        config = config.to_dict()
    clean = {k: v for k, v in config.items() if k not in _IGNORED_CONFIG_KEYS}
    return Wav2Vec2Config(**clean, attn_implementation=attn_implementation)


CHUNK_SECONDS = 10
SAMPLE_RATE = 16000


class Wav2Vec2At25fps(nn.Module):
    """wav2vec2 with the 25 fps interpolation before the encoder.

    ``forward(input_values [N] or [1, N], seq_len) -> [seq_len, num_layers, hidden]``.
    ``do_normalize`` records whether the feature extractor of this checkpoint normalises the
    waveform (zero mean, unit variance) before the model; the caller applies it (see
    ``media.speech_features``), the model itself never does.
    """

    def __init__(self, config: dict | Wav2Vec2Config, do_normalize: bool = False,
                 attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = make_config(config, attn_implementation)
        self.do_normalize = bool(do_normalize)
        hf = _HFWav2Vec2Model(self.config)
        # Keep transformers' submodules under the checkpoint's own attribute names.
        self.feature_extractor = hf.feature_extractor
        self.feature_projection = hf.feature_projection
        self.encoder = hf.encoder
        if hasattr(hf, "masked_spec_embed"):
            # Only used for training-time masking; kept so checkpoints load without leftovers.
            self.masked_spec_embed = hf.masked_spec_embed
        self.chunk_samples = CHUNK_SECONDS * SAMPLE_RATE   # conv encoder input per chunk
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.feature_projection.projection.weight.dtype

    # -- conv feature encoder, in chunks ---------------------------------------------------------
    def _geometry(self) -> tuple[int, int]:
        """(hop, receptive field) of the conv stack in samples (320, 400 for every released wav2vec2)."""
        hop, field = 1, 1
        for k, st in zip(reversed(self.config.conv_kernel), reversed(self.config.conv_stride)):
            field = (field - 1) * st + k
        for st in self.config.conv_stride:
            hop *= st
        return hop, field

    def conv_overlap_samples(self) -> int:
        hop, field = self._geometry()
        return field - hop

    def _conv_frames(self, n: int) -> int:
        for k, st in zip(self.config.conv_kernel, self.config.conv_stride):
            n = (n - k) // st + 1
        return n

    def conv_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """[B, N] samples -> [B, C_conv, T_conv] (~50 Hz); long inputs in chunks (module docstring)."""
        x = input_values.to(self.dtype)
        hop, field = self._geometry()
        total = self._conv_frames(x.shape[-1])
        per = max(1, self.chunk_samples // hop)                 # output frames per chunk
        if total <= per:
            return self.feature_extractor(x)
        layers = self.feature_extractor.conv_layers
        norm = getattr(layers[0], "layer_norm", None)
        per_channel = isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels
        if isinstance(norm, nn.GroupNorm) and not per_channel:
            return self.feature_extractor(x)                    # no released checkpoint: one pass
        stats = self._group_norm_stats(x, per * hop) if per_channel else None
        out = []
        for j0 in range(0, total, per):
            j1 = min(total, j0 + per)
            h = x[:, j0 * hop:(j1 - 1) * hop + field][:, None]
            for i, layer in enumerate(layers):
                if i == 0 and stats is not None:
                    h = layer.activation(self._group_norm(norm, layer.conv(h), stats))
                else:
                    h = layer(h)
            out.append(h)
        return torch.cat(out, dim=-1)

    def _group_norm_stats(self, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) variance over the whole clip of the first conv's output,
        accumulated chunk by chunk in float64."""
        conv = self.feature_extractor.conv_layers[0].conv
        k, st = conv.kernel_size[0], conv.stride[0]
        frames = (x.shape[-1] - k) // st + 1
        per = max(1, chunk // st)
        total = total_sq = 0
        for m0 in range(0, frames, per):
            m1 = min(frames, m0 + per)
            h = conv(x[:, None, m0 * st:(m1 - 1) * st + k]).float()
            total = total + h.sum(-1, dtype=torch.float64)
            total_sq = total_sq + h.square().sum(-1, dtype=torch.float64)
        mean = total / frames
        var = (total_sq / frames - mean.square()).clamp(min=0)
        return mean, var

    @staticmethod
    def _group_norm(norm: nn.GroupNorm, h: torch.Tensor, stats) -> torch.Tensor:
        """``norm`` (one group per channel) applied with clip-wide statistics instead of this chunk's."""
        mean, var = stats
        scale = torch.rsqrt(var + norm.eps).float()
        out = (h.float() - mean.float()[..., None]) * scale[..., None]
        return (out * norm.weight.float()[:, None] + norm.bias.float()[:, None]).to(h.dtype)

    @staticmethod
    def to_frames(conv: torch.Tensor, seq_len: int) -> torch.Tensor:
        """[B, C_conv, T_conv] -> [B, seq_len, C_conv]: linear, align_corners=True (the reference)."""
        if seq_len < 1:
            raise ValueError(f"wav2vec: seq_len must be >= 1 video frame, got {seq_len} "
                             "(the audio is shorter than one frame at 25 fps)")
        return F.interpolate(conv, size=seq_len, mode="linear", align_corners=True).transpose(1, 2)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, C_conv] -> [B, T, num_layers, hidden]: the outputs of every transformer layer."""
        hidden = self.feature_projection(frames)[0]  # (projected, normed-unprojected) -> projected
        enc = self.encoder
        stable = self.config.do_stable_layer_norm
        hidden = hidden + enc.pos_conv_embed(hidden)
        if not stable:
            hidden = enc.layer_norm(hidden)
        outputs = []
        for layer in enc.layers:
            out = layer(hidden, attention_mask=None)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
            outputs.append(hidden)
        if stable:
            # Pre-LN variants normalise only the last hidden state.
            outputs[-1] = enc.layer_norm(outputs[-1])
        return torch.stack(outputs, dim=2)

    def forward(self, input_values: torch.Tensor, seq_len: int) -> torch.Tensor:
        if input_values.dim() == 1:
            input_values = input_values[None]
        if input_values.dim() != 2 or input_values.shape[0] != 1:
            raise ValueError(f"wav2vec: expected one mono waveform [N] or [1, N], got {tuple(input_values.shape)}")
        conv = self.conv_features(input_values)  # [1, C_conv, T_conv]
        frames = self.to_frames(conv, seq_len)  # [1, seq_len, C_conv]
        return self.encode(frames)[0]  # [seq_len, layers, hidden]
