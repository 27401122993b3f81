"""Generate the UI-format workflows (example_workflows/*.json) from the API-format graphs (workflows_api/).

The API graph is the source of truth (it is what tests and docs/api_client.py queue). The UI twin
is what the ComfyUI page loads: nodes laid out left to right by depth, links, and widgets_values in
the order the host's node definitions give (GET /object_info), including the extra values the
frontend stores after some widgets (``control_after_generate`` of seeds, the upload widgets).

    .venv/bin/python .ci/make_workflows.py               # starts a throwaway host for /object_info
    .venv/bin/python .ci/make_workflows.py --url http://127.0.0.1:8188
    .venv/bin/python .ci/make_workflows.py --check       # exit 1 if a UI file is out of date

The host lists example_workflows/ of custom nodes as templates (GET /workflow_templates, files under
/api/workflow_templates/<pack folder>/); workflows_api/ is deliberately not one of the folder names
it scans.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "workflows_api"
UI_DIR = ROOT / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_GAP, ROW_GAP, NODE_WIDTH = 400, 40, 340
SEED_CONTROL = "fixed"          # bundled demos reproduce; users switch to "randomize" themselves

log = logging.getLogger("make_workflows")


class WorkflowError(ValueError):
    """An API graph does not match the host's node definitions."""


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the host's order: required then optional."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for group in ("required", "optional"):
        for name in order.get(group, []):
            out.append((name, info["input"][group][name], group == "optional"))
    return out


def widget_values(class_type: str, inputs: dict, info: dict) -> list:
    """widgets_values as the frontend saves them for this node."""
    values = []
    for name, spec, optional in ordered_inputs(info):
        if not is_widget(spec) or isinstance(inputs.get(name), list):
            continue
        opts = spec[1] if len(spec) > 1 else {}
        if name in inputs:
            value = inputs[name]
        elif "default" in opts:
            value = opts["default"]
        elif optional:
            continue
        else:
            raise WorkflowError(f"{class_type}: required widget '{name}' has no value and no default")
        values.append(value)
        if opts.get("control_after_generate"):
            values.append(SEED_CONTROL)
        if opts.get("image_upload") or opts.get("video_upload"):
            values.append("image")              # the upload button's stored value
        if opts.get("audio_upload"):
            values.extend([None, None])         # the audio preview and upload widgets
    return values


def _depths(graph: dict) -> dict[str, int]:
    """Longest distance from a source node: the column of each node."""
    memo: dict[str, int] = {}

    def depth(nid: str, stack=()) -> int:
        if nid in memo:
            return memo[nid]
        if nid in stack:
            raise WorkflowError(f"cycle through node {nid}")
        ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]
        memo[nid] = 1 + max((depth(u, stack + (nid,)) for u in ups), default=-1)
        return memo[nid]

    for nid in graph:
        depth(nid)
    # Loaders sit just left of their first consumer rather than all in column 0.
    consumers: dict[str, list[str]] = defaultdict(list)
    for nid, node in graph.items():
        for v in node["inputs"].values():
            if isinstance(v, list):
                consumers[v[0]].append(nid)
    for nid in sorted(graph, key=lambda n: -memo[n]):
        if consumers[nid]:
            memo[nid] = min(memo[c] for c in consumers[nid]) - 1
    return memo


# Room for the preview an upload widget draws under the node once its file loads (measured in
# frontends 1.32.9 and 1.58.1: Load Image grows by ~172 px, Load Video by ~294 px); without it the
# grown node covers the one below it in the column.
PREVIEW_HEIGHT = {"image_upload": 190, "video_upload": 310}


def _node_height(n_sockets: int, n_widgets: int, multiline: int, preview: int = 0) -> int:
    return 46 + 22 * n_sockets + 26 * n_widgets + 90 * multiline + preview


def api_to_ui(graph: dict, object_info: dict, name: str) -> dict:
    """One API-format graph -> the UI (LiteGraph 0.4) workflow."""
    missing = sorted({n["class_type"] for n in graph.values()} - set(object_info))
    if missing:
        raise WorkflowError(f"{name}: the host has no node types {missing}; is the pack installed?")
    ids = {nid: int(nid) for nid in graph}
    depths = _depths(graph)
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    order = sorted(graph, key=lambda n: (depths[n], ids[n]))
    column_y: dict[int, int] = defaultdict(int)
    for pos, nid in enumerate(order):
        node = graph[nid]
        ct, inputs = node["class_type"], node["inputs"]
        info = object_info[ct]
        unknown = set(inputs) - {n for n, _, _ in ordered_inputs(info)}
        if unknown:
            raise WorkflowError(f"{name}: node {nid} ({ct}) has inputs the host does not know: {sorted(unknown)}")
        sockets, multiline, preview = [], 0, 0
        for in_name, spec, optional in ordered_inputs(info):
            value = inputs.get(in_name)
            if is_widget(spec):
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                multiline += bool(options.get("multiline"))
                preview += sum(h for flag, h in PREVIEW_HEIGHT.items() if options.get(flag))
                if not isinstance(value, list):
                    continue
            link = None
            if isinstance(value, list):
                src, slot = value
                link = len(links) + 1
                src_type = object_info[graph[src]["class_type"]]["output"][slot]
                links.append([link, ids[src], slot, ids[nid], len(sockets), src_type])
                out_links[(src, slot)].append(link)
            elif not optional:
                raise WorkflowError(f"{name}: node {nid} ({ct}) input '{in_name}' is not connected")
            entry = {"name": in_name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO",
                     "link": link}
            if is_widget(spec):
                entry["widget"] = {"name": in_name}
            sockets.append(entry)
        widgets = widget_values(ct, inputs, info)
        col = depths[nid]
        height = _node_height(max(len(sockets), len(info["output"])), len(widgets), multiline, preview)
        ui = {"id": ids[nid], "type": ct, "pos": [30 + col * COLUMN_GAP, 30 + column_y[col]],
              "size": [NODE_WIDTH, height], "flags": {}, "order": pos, "mode": 0,
              "inputs": sockets, "outputs": [], "properties": {"Node name for S&R": ct},
              "widgets_values": widgets}
        title = node.get("_meta", {}).get("title")
        if title and title != info.get("display_name"):
            ui["title"] = title
        column_y[col] += height + ROW_GAP
        nodes.append(ui)
    for ui in nodes:
        nid = str(ui["id"])
        info = object_info[ui["type"]]
        ui["outputs"] = [{"name": oname, "type": otype, "slot_index": i,
                          "links": out_links.get((nid, i)) or None}
                         for i, (otype, oname) in enumerate(zip(info["output"], info["output_name"]))]
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-infinitetalk/{name}")), "revision": 0,
            "last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def fetch_object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=120) as resp:
        return json.loads(resp.read())


def object_info_from_fresh_host() -> dict:
    sys.path.insert(0, str(ROOT / "harness"))
    from host_server import HostServer
    with HostServer() as host:
        return host.object_info()


def render(name: str, object_info: dict) -> str:
    graph = json.loads((API_DIR / f"{name}.json").read_text())
    return json.dumps(api_to_ui(graph, object_info, name), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running host (default: start a throwaway one)")
    parser.add_argument("--object-info", type=Path, help="a saved GET /object_info answer")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if out of date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.object_info:
        info = json.loads(args.object_info.read_text())
    elif args.url:
        info = fetch_object_info(args.url)
    else:
        info = object_info_from_fresh_host()
    stale = []
    UI_DIR.mkdir(exist_ok=True)
    for api_file in sorted(API_DIR.glob("*.json")):
        text = render(api_file.stem, info)
        target = UI_DIR / api_file.name
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text)
            log.info("wrote %s", target.relative_to(ROOT))
    if args.check and stale:
        log.error("out of date (run .venv/bin/python .ci/make_workflows.py): %s", ", ".join(stale))
        return 1
    print(f"{len(list(API_DIR.glob('*.json')))} workflows, {len(stale)} {'stale' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
