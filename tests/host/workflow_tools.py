"""Convert ComfyUI workflows between the API format (what /prompt takes) and the UI format (what the
editor saves and the template browser loads), using a server's /object_info for widget order, and make the
templates' thumbnails from real runs.

The example workflows are authored in API format (tests/host/workflows/; ``_meta.column`` places a node in
a column of the UI layout, in file order; ``_meta.thumbnail`` marks the outputs the thumbnail shows) and the
UI copies in workflows/ are generated from them. One
command regenerates every UI copy and its thumbnail (``workflows/<name>.jpg``, the template browser's
picture), running each workflow on the bundled starter in a fresh ComfyUI server:

    COMFYUI_PATH=... COMFYUI_PYTHON=... python tests/host/workflow_tools.py regenerate

or one file against a running server:

    python tests/host/workflow_tools.py to-ui tests/host/workflows/X.json workflows/X.json --url http://127.0.0.1:8199

The host tests convert each UI file back with :func:`ui_to_api` against the live server and compare
it with the API copy, so a changed node signature (widget order) is caught.
"""
from __future__ import annotations

import argparse
import json
import urllib.request
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _ordered_inputs(info: dict) -> list[tuple[str, list, str]]:
    """(name, spec, section) in the node's declared order (required, then optional)."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, info["input"][section][name], section))
    return out


def is_widget(spec) -> bool:
    typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def widget_extras(spec) -> list:
    """Extra widget values the editor stores after a widget (seed control, image upload)."""
    opts = spec[1] if len(spec) > 1 else {}
    extras = []
    if opts.get("control_after_generate"):
        extras.append("fixed")
    if opts.get("image_upload"):
        extras.append("image")
    return extras


def _default(spec):
    typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0] if typ else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


def _type_name(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


# Layout: columns left to right, nodes stacked in each; sizes are the editor's (LiteGraph) row heights, rounded
# up, plus room for the image previews the editor draws inside a node, so nothing overlaps before or after a run.
TITLE_H = 30  # the title bar, drawn above a node's pos
SLOT_H, WIDGET_H, MULTILINE_H = 20, 24, 84
GAP_X, GAP_Y = 80, 50  # GAP_Y: between a node's bottom and the next node's title (which carries the pack's badge)
NODE_W = 340
# the Time-lapse node shows its keyframe previews (progress) the same way
PREVIEW_H = {"LoadImage": 290, "PreviewImage": 290, "SaveImage": 290, "InversePaintingSaveProcess": 290,
             "InversePaintingTimelapse": 290}


def node_size(class_type: str, info: dict) -> list[int]:
    """[width, height] of a node body: socket rows, widget rows and the image preview it shows."""
    sockets = sum(1 for _, spec, _ in _ordered_inputs(info) if not is_widget(spec))
    widgets = multiline = 0
    for _, spec, _ in _ordered_inputs(info):
        if is_widget(spec):
            widgets += 1 + len(widget_extras(spec))
            multiline += bool(spec[0] == "STRING" and len(spec) > 1 and spec[1].get("multiline"))
    rows = max(sockets, len(info["output"]))
    height = SLOT_H * rows + WIDGET_H * (widgets - multiline) + MULTILINE_H * multiline + 20
    return [NODE_W, height + PREVIEW_H.get(class_type, 0)]


def api_to_ui(api: dict, object_info: dict) -> dict:
    ids = sorted(api, key=int)
    # column = _meta.column, else the longest path from a source node
    depth: dict[str, int] = {}

    def d(nid):
        if nid not in depth:
            depth[nid] = 0
            ups = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[nid] = 1 + max((d(u) for u in ups), default=-1)
        return depth[nid]

    column = {nid: api[nid].get("_meta", {}).get("column", d(nid)) for nid in ids}
    for nid in ids:
        d(nid)
    sizes = {nid: node_size(api[nid]["class_type"], object_info[api[nid]["class_type"]]) for nid in ids}
    col_x, x = {}, 40
    for c in sorted(set(column.values())):
        col_x[c] = x
        x += max(sizes[n][0] for n in ids if column[n] == c) + GAP_X
    next_y: dict[int, int] = defaultdict(lambda: 40 + TITLE_H)
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    link_id = 0
    for nid in ids:
        node = api[nid]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec, _section in _ordered_inputs(info):
            val = node["inputs"].get(name)
            linked = isinstance(val, list) and len(val) == 2 and isinstance(val[0], str)
            widget = is_widget(spec)
            if widget:
                widgets.append(_default(spec) if linked or val is None else val)
                widgets.extend(widget_extras(spec))
            if linked:
                link_id += 1
                src, slot = val
                # to_slot is the index in this node's "inputs" list (sockets, incl. converted widgets)
                links.append([link_id, int(src), slot, int(nid), len(inputs),
                              object_info[api[src]["class_type"]]["output"][slot]])
                out_links[(src, slot)].append(link_id)
                entry = {"name": name, "type": _type_name(spec), "link": link_id}
                if widget:
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif not widget:
                inputs.append({"name": name, "type": _type_name(spec), "link": None})
        c = column[nid]
        pos = [col_x[c], next_y[c]]
        next_y[c] += sizes[nid][1] + GAP_Y + TITLE_H
        title = node.get("_meta", {}).get("title")
        ui = {"id": int(nid), "type": node["class_type"], "pos": pos, "size": sizes[nid], "flags": {},
              "order": 0, "mode": 0, "inputs": inputs, "outputs": [],
              "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        if title and title != info.get("display_name"):
            ui["title"] = title
        nodes.append(ui)
    for ui in nodes:
        info = object_info[ui["type"]]
        ui["outputs"] = [{"name": info["output_name"][i], "type": t, "links": out_links.get((str(ui["id"]), i), []),
                          "slot_index": i} for i, t in enumerate(info["output"])]
    order = sorted(nodes, key=lambda n: (depth[str(n["id"])], n["id"]))
    for i, n in enumerate(order):
        n["order"] = i
    return {"last_node_id": max(int(i) for i in ids), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """What the editor sends to /prompt for a UI workflow (active nodes only)."""
    links = {ln[0]: ln for ln in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        inputs: dict = {}
        for name, spec, _section in _ordered_inputs(info):
            if is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
                inputs[name] = values.pop(0)
                for _ in widget_extras(spec):
                    values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over: {values}")
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                ln = links[inp["link"]]
                inputs[inp["name"]] = [str(ln[1]), ln[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def strip_meta(api: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def _object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


# ------------------------------------------------------------------------------------------ thumbnails

THUMB_SIZE = 512  # the template browser shows square cards
THUMB_MAX_IMAGES = 9


def _output_images(server, api: dict, outputs: dict) -> list:
    """The images a run showed, in node order, from the nodes marked ``_meta.thumbnail`` (default: every output);
    an animated WebP (Save Painting Process) gives all its frames. A single image comes after the input painting."""
    from PIL import Image, ImageSequence

    marked = [nid for nid, node in api.items() if node.get("_meta", {}).get("thumbnail")]
    images = []
    for nid in sorted(marked or outputs, key=int):
        for item in outputs.get(nid, {}).get("images", []):
            with Image.open(server.output_file(item)) as im:
                images += [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    if len(images) == 1:
        loads = [n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage"]
        if loads:
            images.insert(0, Image.open(server.base_dir / "input" / loads[0]).convert("RGB"))
    return images


def thumbnail(images: list):
    """A square contact sheet: up to 9 images, evenly sampled (the first and the last kept), in a grid."""
    import math

    from PIL import Image

    if len(images) > THUMB_MAX_IMAGES:
        n = len(images) - 1
        images = [images[round(i * n / (THUMB_MAX_IMAGES - 1))] for i in range(THUMB_MAX_IMAGES)]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (THUMB_SIZE, THUMB_SIZE), (24, 24, 24))
    cw, ch = THUMB_SIZE // cols, THUMB_SIZE // rows
    for i, im in enumerate(images):
        scale = min((cw - 6) / im.width, (ch - 6) / im.height)
        tile = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        x, y = (i % cols) * cw + (cw - tile.width) // 2, (i // cols) * ch + (ch - tile.height) // 2
        sheet.paste(tile, (x, y))
    return sheet


def regenerate(api_dir, ui_dir, names=None, thumbnails: bool = True) -> None:
    """Start a ComfyUI server (COMFYUI_PATH, COMFYUI_PYTHON) with this pack, write every UI copy from its API
    copy, then run each workflow as it is (the bundled starter, default settings) and save its thumbnail."""
    import os
    import sys
    import tempfile
    import time
    from pathlib import Path

    from comfy_host import ComfyServer, make_base_dir

    comfy = os.environ.get("COMFYUI_PATH") or sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="comfy_regenerate_")), None)
    server = ComfyServer(Path(comfy), os.environ.get("COMFYUI_PYTHON", sys.executable), base)
    server.start(timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "240")))
    try:
        info = server.object_info()
        for api_path in sorted(Path(api_dir).glob("*.json")):
            if names and api_path.stem not in names:
                continue
            api = json.loads(api_path.read_text())
            ui_path = Path(ui_dir) / api_path.name
            ui_path.write_text(json.dumps(api_to_ui(api, info), indent=1) + "\n")
            print(f"wrote {ui_path}")
            if thumbnails:
                t0 = time.monotonic()
                outputs = server.run(strip_meta(api), timeout=3600)
                jpg = ui_path.with_suffix(".jpg")
                thumbnail(_output_images(server, api, outputs)).save(jpg, quality=88)
                print(f"wrote {jpg} (run: {time.monotonic() - t0:.0f} s)")
    finally:
        server.stop()


def main() -> None:
    from pathlib import Path

    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for cmd in ("to-ui", "to-api"):
        p = sub.add_parser(cmd)
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--url", default="http://127.0.0.1:8199")
    p = sub.add_parser("regenerate", help="all UI copies and thumbnails, from real runs in a new server")
    p.add_argument("names", nargs="*", help="workflow names (default: all)")
    p.add_argument("--api-dir", default=str(here / "workflows"))
    p.add_argument("--ui-dir", default=str(here.parents[1] / "workflows"))
    p.add_argument("--no-thumbnails", action="store_true")
    a = ap.parse_args()
    if a.command == "regenerate":
        regenerate(a.api_dir, a.ui_dir, a.names, not a.no_thumbnails)
        return
    info = _object_info(a.url)
    data = json.load(open(a.src))
    out = api_to_ui(data, info) if a.command == "to-ui" else ui_to_api(data, info)
    with open(a.dst, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
