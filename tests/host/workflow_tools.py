"""Convert ComfyUI workflows between the API format (what /prompt takes) and the UI format (what the
editor saves and the template browser loads), using a server's /object_info for widget order.

The example workflows are authored in API format (tests/host/workflows/) and the UI copies in
workflows/ are generated from them:

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


def api_to_ui(api: dict, object_info: dict) -> dict:
    ids = sorted(api, key=int)
    # column = longest path from a source node, for a readable left-to-right layout
    depth: dict[str, int] = {}

    def d(nid):
        if nid not in depth:
            depth[nid] = 0
            ups = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[nid] = 1 + max((d(u) for u in ups), default=-1)
        return depth[nid]

    for nid in ids:
        d(nid)
    rows: dict[int, int] = defaultdict(int)
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
        col = depth[nid]
        pos = [40 + col * 400, 40 + rows[col]]
        height = 60 + 26 * (len(widgets) + len(inputs))
        rows[col] += height + 40
        title = node.get("_meta", {}).get("title")
        ui = {"id": int(nid), "type": node["class_type"], "pos": pos, "size": [360, height], "flags": {},
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["to-ui", "to-api"])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--url", default="http://127.0.0.1:8199")
    a = ap.parse_args()
    info = _object_info(a.url)
    data = json.load(open(a.src))
    out = api_to_ui(data, info) if a.command == "to-ui" else ui_to_api(data, info)
    with open(a.dst, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
