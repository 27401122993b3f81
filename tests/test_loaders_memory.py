"""Peak host RAM while loading: about one copy of the result (bf16), not fp32 dict + model.

A ~170 MB (fp32) tiny model written as 16 shards + adapter is loaded in a fresh subprocess; the
growth of its peak RSS (ru_maxrss) over the post-import baseline must stay below one bf16 copy plus
a small slack. The official loader's pattern would need fp32 dict + bf16 model ≈ 3 bf16 copies.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tiny import dit_files as tf

SLACK_BYTES = 64 * 2**20

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {tests!r})
import conftest  # registers the pack as 'infinitetalk'
import torch
from infinitetalk.loaders.dit import load_dit
torch.ones(1).bfloat16()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = load_dit({index!r}, {adapter!r}, dtype=torch.bfloat16)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({{"growth": peak - base, "result": size}}))
"""


def test_peak_rss_is_about_one_bf16_copy(tmp_path):
    shapes = {**tf.base_shapes(tf.BIG)}
    audio_shapes = tf.audio_shapes(tf.BIG)
    n_params = sum(math.prod(s) for s in {**shapes, **audio_shapes}.values())
    assert n_params * 4 > 100 * 2**20, "the model must be big enough for a meaningful measurement"
    index = tf.write_base_shards(tmp_path / "wan", tf.random_weights(shapes), tf.BIG, n_shards=16)
    adapter = tf.write_single(tmp_path / "infinitetalk.safetensors", tf.random_weights(audio_shapes, 1))
    code = CHILD.format(tests=str(Path(__file__).parent), index=str(index), adapter=str(adapter))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    bf16 = n_params * 2
    assert report["result"] == bf16
    assert report["growth"] < bf16 + SLACK_BYTES, (
        f"peak RSS grew {report['growth'] / 2**20:.0f} MiB for a {bf16 / 2**20:.0f} MiB bf16 model "
        f"(fp32 files {n_params * 4 / 2**20:.0f} MiB)")
