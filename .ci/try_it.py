"""The README's "try it": from a fresh machine (no GPU, no weights) to a playable mp4 in a few minutes.

Run through ``bash .ci/try.sh`` (which first runs .ci/setup.sh). Steps:
1. a host base directory at out/try-it/ (models/, input/, output/; the pack linked into custom_nodes/);
2. tiny RANDOM models written there under the official file names and layouts (7-shard Wan2.1 base,
   InfiniteTalk single adapter, umT5 .pth + tokenizer, wav2vec2 folder, Wan 2.1 VAE, CLIP-H);
3. the official single-speaker demo inputs (demo/) copied into input/;
4. the bundled workflows_api/infinitetalk_single.json queued on a real ComfyUI (POST /prompt) with
   cheap sampler settings, waited for, and the mp4's absolute path printed.

The weights are random, so the video shows noise shaped by the pipeline, not a face: this checks
the installation and the whole path (loaders, audio features, windows, VAE, mp4 with sound).
Real weights: see the README's model table and load example_workflows/infinitetalk_single.json.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))

from tiny.host_files import (TINY_SAMPLER, copy_demo_inputs, load_api_workflow,  # noqa: E402
                             tiny_graph, write_user_models)

log = logging.getLogger("try_it")
WORKFLOW = "infinitetalk_single"
# The whole 4 s demo speech (two windows) at a small size with the demo image's aspect ratio.
SAMPLER = {**TINY_SAMPLER, "width": 96, "height": 48, "max_frames": 0}


def _host_server_class():
    import host_server
    return host_server.HostServer, host_server.HostError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "out" / "try-it",
                        help="host base directory (default: out/try-it)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the video")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[try-it] %(message)s")
    HostServer, HostError = _host_server_class()
    start = time.monotonic()
    base = args.base.resolve()
    log.info("writing tiny random models under %s (the CLIP-H stand-in is made once and cached)", base / "models")
    files = write_user_models(base / "models")
    copy_demo_inputs(base / "input")
    graph = tiny_graph(load_api_workflow(WORKFLOW), sampler=SAMPLER, models={v: v for v in files.values()})
    log.info("starting ComfyUI and queueing workflows_api/%s.json", WORKFLOW)
    try:
        with HostServer(base) as host:
            outputs = host.run(graph, timeout=args.timeout)
    except HostError as err:
        log.error("%s\nhost log: %s", err, base / "host.log")
        return 1
    videos = [f for node in outputs.values() for f in node.get("images", []) if f["filename"].endswith(".mp4")]
    if not videos:
        log.error("the workflow finished without an mp4 (outputs: %s); host log: %s", outputs, base / "host.log")
        return 1
    path = (base / "output" / videos[0].get("subfolder", "") / videos[0]["filename"]).resolve()
    log.info("done in %.0f s", time.monotonic() - start)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
