"""Run a bundled InfiniteTalk workflow on a ComfyUI server from the command line (see docs/API.md).

    python docs/api_client.py --server http://127.0.0.1:8188 \\
        --workflow workflows_api/infinitetalk_single.json \\
        --image face.png --audio speech.wav --prompt "A woman is talking." --download .

What it does: uploads your files (POST /upload/image, which ComfyUI uses for every input file,
audio and video included), puts their names into the graph's LoadImage / LoadAudio / LoadVideo
nodes, queues the graph (POST /prompt), follows the run on the websocket /ws?clientId=...
(progress, the node executing, errors), and prints the output mp4's path inside the server's
output folder (and, with --download, the local copy's path). Needs Python 3.9+ and aiohttp.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from pathlib import Path

import aiohttp

log = logging.getLogger("api_client")
LOADERS = {"image": "LoadImage", "audio": "LoadAudio", "video": "LoadVideo"}
INPUT_KEY = {"LoadImage": "image", "LoadAudio": "audio", "LoadVideo": "file"}


class ClientError(RuntimeError):
    """The server refused or failed the job; the message carries the server's explanation."""


def nodes_of(graph: dict, class_type: str) -> list[str]:
    """Node ids of one type, in id order (speaker 1's LoadAudio comes before speaker 2's)."""
    return sorted((nid for nid, n in graph.items() if n["class_type"] == class_type), key=int)


def parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, true/false), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_settings(graph: dict, settings: list[str]) -> None:
    """``NODE.input=value``: NODE is a node id or a class_type (then every node of that type)."""
    for item in settings:
        target, sep, value = item.partition("=")
        node, dot, key = target.rpartition(".")
        if not sep or not dot:
            raise ClientError(f"--set {item!r}: expected NODE.input=value, e.g. InfiniteTalkSampler.steps=8")
        ids = [node] if node in graph else nodes_of(graph, node)
        if not ids:
            raise ClientError(f"--set {item!r}: the workflow has no node '{node}'")
        for nid in ids:
            if key not in graph[nid]["inputs"]:
                raise ClientError(f"--set {item!r}: node {nid} ({graph[nid]['class_type']}) has no input "
                                  f"'{key}'; it has {sorted(graph[nid]['inputs'])}")
            graph[nid]["inputs"][key] = parse_value(value)


async def upload(session: aiohttp.ClientSession, server: str, path: Path) -> str:
    """Upload one file into the server's input folder; returns the name to put in the graph."""
    form = aiohttp.FormData()
    form.add_field("image", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
    form.add_field("overwrite", "true")
    async with session.post(f"{server}/upload/image", data=form) as resp:
        if resp.status != 200:
            raise ClientError(f"uploading {path} failed: HTTP {resp.status} {await resp.text()}")
        body = await resp.json()
    return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]


async def substitute_files(session, server: str, graph: dict, files: dict[str, list[Path]]) -> None:
    for kind, paths in files.items():
        class_type = LOADERS[kind]
        ids = nodes_of(graph, class_type)
        if len(paths) > len(ids):
            raise ClientError(f"{len(paths)} {kind} file(s) given but the workflow has {len(ids)} "
                              f"{class_type} node(s)")
        for nid, path in zip(ids, paths):
            name = await upload(session, server, path)
            graph[nid]["inputs"][INPUT_KEY[class_type]] = name
            log.info("%s -> node %s (%s)", path.name, nid, graph[nid].get("_meta", {}).get("title", class_type))


async def queue(session, server: str, graph: dict, client_id: str) -> str:
    async with session.post(f"{server}/prompt", json={"prompt": graph, "client_id": client_id}) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200 or body.get("node_errors"):
            details = [f"{e.get('message')}: {e.get('details')}" for n in body.get("node_errors", {}).values()
                       for e in n.get("errors", [])]
            raise ClientError(f"the server refused the workflow: {body.get('error', {}).get('message', '')} "
                              f"{details}")
    return body["prompt_id"]


async def follow(ws, prompt_id: str, titles: dict) -> list[dict]:
    """Read /ws messages until the prompt finishes; returns the files its output nodes reported."""
    files: list[dict] = []
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue                                    # binary frames are preview images
        event = json.loads(msg.data)
        kind, data = event.get("type"), event.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "progress":
            log.info("progress %s/%s (%s)", data["value"], data["max"], titles.get(data.get("node"), ""))
        elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return files
        elif kind == "executing":
            log.info("running %s", titles.get(data["node"], data["node"]))
        elif kind == "executed":
            for key in ("images", "gifs", "videos"):
                files += (data.get("output") or {}).get(key, [])
        elif kind == "execution_error":
            raise ClientError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                              f"{data.get('exception_message', '').strip()}")
        elif kind == "execution_interrupted":
            raise ClientError("the run was interrupted (cancelled on the server)")
    raise ClientError("the server closed the websocket before the run finished")


async def download(session, server: str, f: dict, folder: Path) -> Path:
    params = {"filename": f["filename"], "subfolder": f.get("subfolder", ""), "type": f.get("type", "output")}
    target = folder / f["filename"]
    async with session.get(f"{server}/view", params=params) as resp:
        if resp.status != 200:
            raise ClientError(f"downloading {f['filename']} failed: HTTP {resp.status}")
        target.write_bytes(await resp.read())
    return target


async def run(args) -> list[str]:
    server = args.server.rstrip("/")
    graph = json.loads(Path(args.workflow).read_text())
    if args.prompt is not None:
        for nid in nodes_of(graph, "InfiniteTalkTextEncode"):
            graph[nid]["inputs"]["prompt"] = args.prompt
    if args.seed is not None:
        for nid in nodes_of(graph, "InfiniteTalkSampler"):
            graph[nid]["inputs"]["seed"] = args.seed
    apply_settings(graph, args.set)
    titles = {nid: n.get("_meta", {}).get("title", n["class_type"]) for nid, n in graph.items()}
    client_id = uuid.uuid4().hex
    files = {k: [Path(p) for p in v] for k, v in
             (("image", args.image), ("audio", args.audio), ("video", args.video)) if v}
    for paths in files.values():
        for p in paths:
            if not p.is_file():
                raise ClientError(f"{p}: no such file")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await substitute_files(session, server, graph, files)
        # Connect before queueing so no message of this run is missed.
        async with session.ws_connect(f"{server}/ws?clientId={client_id}", max_msg_size=0) as ws:
            prompt_id = await queue(session, server, graph, client_id)
            log.info("queued %s", prompt_id)
            outputs = await asyncio.wait_for(follow(ws, prompt_id, titles), timeout=args.timeout)
        videos = [f for f in outputs if f["filename"].endswith(".mp4")]
        if not videos:
            raise ClientError(f"the run finished without an mp4 output (outputs: {outputs})")
        lines = [str(Path(f.get("subfolder", "")) / f["filename"]) for f in videos]
        if args.download:
            folder = Path(args.download)
            folder.mkdir(parents=True, exist_ok=True)
            lines += [str((await download(session, server, f, folder)).resolve()) for f in videos]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run an InfiniteTalk workflow on a ComfyUI server.")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--workflow", required=True, help="an API-format graph, e.g. workflows_api/infinitetalk_single.json")
    p.add_argument("--image", action="append", default=[], help="reference image (LoadImage nodes, in order)")
    p.add_argument("--audio", action="append", default=[], help="speech; twice for two speakers (left, right)")
    p.add_argument("--video", action="append", default=[], help="video to dub (LoadVideo)")
    p.add_argument("--prompt", help="replace the text prompt")
    p.add_argument("--seed", type=int, help="replace the sampler seed")
    p.add_argument("--set", action="append", default=[], metavar="NODE.input=value",
                   help="any other input, e.g. InfiniteTalkSampler.steps=8 (node id or class_type)")
    p.add_argument("--download", metavar="DIR", help="also download the mp4 into DIR")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        lines = asyncio.run(run(args))
    except (ClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        log.error("error: %s", err)
        return 1
    print("\n".join(lines))         # server-side path(s) inside output/, then local copies
    return 0


if __name__ == "__main__":
    sys.exit(main())
