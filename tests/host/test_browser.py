"""The real ComfyUI page in Debian's Chromium loads every bundled UI workflow with no missing nodes.

Twice: in the frontend the host pins (comfyui-frontend-package 1.32.9) and in the current one from
PyPI (1.58.1, installed by .ci/setup.sh into .host/frontend-1.58.1 and served by a second host with
``--front-end-root``). Needs /usr/bin/chromium (Debian package ``chromium``) and the ``playwright``
Python package; never downloads a browser. Screenshots go to pytest's tmp dir (path logged).
"""
from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path

import pytest

from tiny.host_files import REPO

from host_server import HostServer

pytestmark = [pytest.mark.host, pytest.mark.browser]
log = logging.getLogger(__name__)

CHROMIUM = Path(os.environ.get("INFINITETALK_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CURRENT_FRONTEND = Path(os.environ.get(
    "INFINITETALK_CURRENT_FRONTEND",
    REPO / ".host" / "frontend-1.58.1" / "comfyui_frontend_package" / "static"))
UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
OUR_NODES = ["InfiniteTalkModelLoader", "InfiniteTalkLoraSelect", "InfiniteTalkTextEncode",
             "InfiniteTalkAudioEncode", "InfiniteTalkSpeakerMask", "InfiniteTalkSampler",
             "InfiniteTalkVideoCombine"]

# Runs in the page: load one workflow, report what the graph holds afterwards. Node ids come back
# as strings: frontend 1.58.1 keeps a live node's id as the string "5" (1.32.9: the number 5) while
# both still save numbers, so the test compares ids as strings on both sides.
LOAD_AND_INSPECT = """async (wf) => {
  await window.app.loadGraphData(wf);
  const registered = window.LiteGraph.registered_node_types;
  const nodes = window.app.graph._nodes.map(n => ({
    id: String(n.id), type: n.type, known: n.type in registered, has_errors: !!n.has_errors,
    widgets: Object.fromEntries((n.widgets || []).filter(w => w.name).map(w => [w.name,
      (typeof w.value === 'string' || typeof w.value === 'number' || typeof w.value === 'boolean')
        ? w.value : null])),
  }));
  return {nodes, links: Object.keys(window.app.graph.links || {}).length};
}"""

# Upload widgets draw a preview once their file has loaded (Load Image: node.imgs, Load Video: a
# "video-preview" widget, in 1.32.9 and 1.58.1 alike) and the node grows to hold it.
PREVIEWS_SHOWN = """() => window.app.graph._nodes.every(n =>
  (n.type !== 'LoadImage' || (n.imgs || []).some(i => i.complete && i.naturalWidth)) &&
  (n.type !== 'LoadVideo' || (n.widgets || []).some(w => w.name === 'video-preview')))"""
# Pairs of nodes whose boxes (title bar included) overlap: one would hide the other from the user.
OVERLAPPING_NODES = """() => {
  const title = window.LiteGraph.NODE_TITLE_HEIGHT, nodes = window.app.graph._nodes, hits = [];
  const box = n => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
  nodes.forEach((a, i) => nodes.slice(i + 1).forEach(b => {
    const [p, q] = [box(a), box(b)];
    if (Math.min(p[2], q[2]) > Math.max(p[0], q[0]) && Math.min(p[3], q[3]) > Math.max(p[1], q[1]))
      hits.push(`${a.type} #${a.id} / ${b.type} #${b.id}`);
  }));
  return hits;
}"""


def _close_dialogs(pg) -> None:
    """Close whatever dialog the frontend opened (first-visit templates browser, missing-model notes)."""
    for button in pg.locator(".p-dialog-close-button, .p-dialog-header-close").all():
        if button.is_visible():
            button.click()
    pg.wait_for_timeout(200)


def _skip_first_visit_tour(host) -> None:
    """A fresh host opens the templates browser on first visit; mark the tour done instead."""
    req = urllib.request.Request(f"{host.url}/settings/Comfy.TutorialCompleted", data=b"true",
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30):
        pass


@pytest.fixture(scope="module", params=["pinned", "1.58.1"])
def page_host(request, host, tmp_path_factory):
    """The session host (its pinned frontend), or a second one serving the current frontend."""
    if request.param == "pinned":
        yield host
        return
    if not (CURRENT_FRONTEND / "index.html").is_file():
        pytest.skip(f"{CURRENT_FRONTEND} is absent: .ci/setup.sh installs comfyui-frontend-package "
                    "1.58.1 there")
    base = tmp_path_factory.mktemp("comfy-base-frontend")
    with HostServer(base, extra_args=("--front-end-root", str(CURRENT_FRONTEND))) as server:
        server.frontend = request.param
        yield server


@pytest.fixture(scope="module")
def page(page_host, tmp_path_factory):
    host = page_host
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium) "
                    "to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    _skip_first_visit_tour(host)
    with sync_api.sync_playwright() as pw:
        # A fresh profile directory per session (Playwright passes it as --user-data-dir).
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 2000, "height": 1500})
        try:
            pg = browser.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(host.url, wait_until="domcontentloaded", timeout=120_000)
            # Node definitions are registered once /object_info has been read by the frontend.
            pg.wait_for_function(
                "() => window.app && window.app.graph && window.LiteGraph && "
                "'InfiniteTalkSampler' in window.LiteGraph.registered_node_types", timeout=120_000)
            _close_dialogs(pg)
            pg.page_errors = errors
            pg.frontend = getattr(host, "frontend", "pinned")
            yield pg
        finally:
            browser.close()


def test_our_nodes_are_registered_in_the_page(page):
    registered = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
    assert set(OUR_NODES) <= set(registered)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_ui_workflow_loads_without_missing_nodes(page, path, tmp_path_factory):
    wf = json.loads(path.read_text())
    got = page.evaluate(LOAD_AND_INSPECT, wf)
    assert len(got["nodes"]) == len(wf["nodes"]), got
    missing = [n["type"] for n in got["nodes"] if not n["known"]]
    assert not missing, f"{path.name}: missing node types {missing}"
    assert got["links"] == len(wf["links"])
    # widgets_values landed on the right widgets (order as the host defines them)
    by_id = {n["id"]: n for n in got["nodes"]}
    assert sorted(by_id) == sorted(str(n["id"]) for n in wf["nodes"]), "node ids renumbered"
    for node in wf["nodes"]:
        if node["type"] == "InfiniteTalkSampler":
            w = by_id[str(node["id"])]["widgets"]
            assert w["seed"] == 42 and w["mode"] in ("standard", "fast") and w["resolution"] == "480p", w
            assert w.get("control_after_generate") == "fixed", w
        if node["type"] == "InfiniteTalkModelLoader":
            assert by_id[str(node["id"])]["widgets"]["model"] == node["widgets_values"][0]
    page.wait_for_function(PREVIEWS_SHOWN, timeout=60_000)
    shots = tmp_path_factory.getbasetemp() / "browser-screenshots"
    shots.mkdir(exist_ok=True)
    page.evaluate("() => { window.app.canvas.ds.scale = 0.75; window.app.canvas.ds.offset = [90, 130];"
                  " window.app.graph.setDirtyCanvas(true, true); }")
    _close_dialogs(page)
    page.wait_for_timeout(300)
    shot = shots / f"{path.stem}-{page.frontend}.png"
    page.screenshot(path=str(shot))
    log.info("screenshot: %s", shot)
    assert shot.stat().st_size > 10_000
    covered = page.evaluate(OVERLAPPING_NODES)
    assert not covered, f"{path.name}: nodes cover each other: {covered} (see {shot})"
    assert not [e for e in page.page_errors if "InfiniteTalk" in e], page.page_errors
