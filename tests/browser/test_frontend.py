"""The pack's front end in a real browser (headless Chromium) on a real ComfyUI host.

(a) ComfyUI's page loads with the pack installed: the pack's web extension is listed, fetched
    and registered exactly once, and nothing in the console (console.error, uncaught exceptions,
    browser log errors) mentions the pack. Other console errors are printed, not failed on: they
    come from the host's front end in an offline container (registry look-ups blocked, no user
    files yet).
(b) Each template (example_workflows/*.json) is opened the way a user does: the Templates button
    in the side bar, the pack's folder name in the dialog's Extensions list, the template's card,
    all with real mouse clicks. Then, read from the page (window.app): every node's type is a
    registered node class (no missing-node placeholder, no missing-nodes dialog or notice, no node
    flagged with errors), the node and link counts are the template's, each node's widget values
    are the template's widgets_values (and, by widget name, the values its API-format version in
    example_workflows/api/ sets), the pack's nodes are coloured by its extension, and no node is
    drawn over another (hiding its widgets). A screenshot per template goes to
    test_artifacts/browser/<host>/<template>.png (the path is printed; run pytest with -s).
(c) The template dialog finds a thumbnail for each template (it asks for
    /api/workflow_templates/<pack>/<name>.jpg; a missing one is a 404 console error).
(d) The console check itself catches the extension served twice (the front end's "Extension
    named 'Realiz3D.NodeLook' already registered"): a second folder serving a copy of the pack's
    JS is installed beside the pack, and the check must report both the second load and the error.
"""
import glob
import json
import os
import re
import shutil
import time
from collections import Counter

import pytest
from browser_host import ARTIFACTS, HOST, load_page, open_page, start_host

from comfy_host import PACK_NAME, ROOT

pytestmark = pytest.mark.timeout(240)

TEMPLATES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
WEB_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "web", "*.js")))


def extension_names() -> list[str]:
    """The names the pack's web/*.js register (app.registerExtension({name: ...}))."""
    names = []
    for path in glob.glob(os.path.join(ROOT, "web", "*.js")):
        with open(path) as f:
            names += re.findall(r"registerExtension\(\s*\{\s*name:\s*[\"']([^\"']+)[\"']", f.read())
    return sorted(names)


# -- the console ---------------------------------------------------------------------------------
#: the template dialog's request for a template thumbnail (checked by test (c) on its own)
THUMBNAIL = re.compile(rf"/api/workflow_templates/{re.escape(PACK_NAME)}/[^/\s]+\.(jpe?g|png|webp)\b")
#: host-only noise that names the pack's node types without coming from the pack: the front end
#: asks the node registry (api.comfy.org) about each node pack and node type, which the page's
#: own Content-Security-Policy blocks when offline
HOST_NOISE = [re.compile(r"Connecting to 'https://api\.comfy\.org/[^']*' violates the following Content Security Policy")]


def errors(messages):
    return [m for m in messages if m["level"] in ("error", "assert") or m["kind"] == "exception"]


def split_console(messages):
    """(errors that mention the pack, thumbnail 404s, other errors)."""
    pack, thumbs, other = [], [], []
    for m in errors(messages):
        blob = f"{m['text']} {m['source']}"
        if THUMBNAIL.search(blob):
            thumbs.append(m)
        elif "realiz3d" in blob.lower() and not any(p.search(m["text"]) for p in HOST_NOISE):
            pack.append(m)
        else:
            other.append(m)
    return pack, thumbs, other


def fmt(messages) -> str:
    return "\n".join(f"  [{m['kind']}:{m['level']}] {m['text'][:600]}  (source: {m['source'][:300]})"
                     for m in messages)


def report_other(other, what):
    if other:
        print(f"\n{len(other)} other console error(s) {what} (host front end, not the pack):\n{fmt(other)}")


def web_file_loads(page) -> Counter:
    """How often each of the pack's web/*.js files was fetched by the page (any folder under
    /extensions/: a second copy under another name counts too)."""
    loads = Counter()
    for ev in list(page.events):
        if ev.get("method") != "Network.requestWillBeSent":
            continue
        url = ev["params"]["request"]["url"].split("?")[0]
        if "/extensions/" in url and os.path.basename(url) in WEB_FILES:
            loads[os.path.basename(url)] += 1
    return loads


def check_extension_once(page) -> list[str]:
    problems = []
    listed = [e for e in page.host.get("/extensions") if os.path.basename(e) in WEB_FILES]
    if sorted(listed) != sorted(f"/extensions/{PACK_NAME}/{f}" for f in WEB_FILES):
        problems.append(f"/extensions lists the pack's JS as {listed}, expected each of {WEB_FILES} once")
    loads = web_file_loads(page)
    for f in WEB_FILES:
        if loads[f] != 1:
            problems.append(f"the page fetched {f} {loads[f]} time(s), expected once")
    registered = Counter(page.evaluate("app.extensions.map(e => e.name)"))
    for name in extension_names():
        if registered[name] != 1:
            problems.append(f"extension {name!r} registered {registered[name]} time(s), expected once")
    return problems


# -- the UI ----------------------------------------------------------------------------------------
def click(page, selector_js: str, what: str, timeout: float = 20) -> None:
    """A real mouse click at the centre of the element ``selector_js`` evaluates to, once it is
    visible, on top (not covered by another element) and still (no animation on it or around it,
    where it was a moment ago)."""
    probe = f"""(() => {{
        const el = {selector_js};
        if (!el) return {{why: "not in the page"}};
        el.scrollIntoView({{block: "center", inline: "center"}});
        const r = el.getBoundingClientRect();
        if (r.width < 2 || r.height < 2) return {{why: "not visible"}};
        // a dialog still zooming in (or any moving ancestor): what is under a point changes each frame
        const moving = document.getAnimations().some(a => a.playState === "running" && a.effect
            && a.effect.target instanceof Element && (a.effect.target === el || a.effect.target.contains(el)));
        if (moving) return {{why: "still animating"}};
        const x = r.left + r.width / 2, y = r.top + r.height / 2;
        const top = document.elementFromPoint(x, y);
        if (!top || !(el === top || el.contains(top)))
            return {{why: "covered by " + (top ? top.outerHTML.slice(0, 300) : "nothing")}};
        return {{xy: [x, y]}};
    }})()"""
    t0, last, before = time.time(), None, None
    while time.time() - t0 < timeout:
        last = page.evaluate(probe)
        # clickable, and where it was a moment ago: a click while a card grid still lays out
        # lands on whatever card has moved under the pointer by then
        if "xy" in last and last["xy"] == before:
            break
        before = last.get("xy")
        time.sleep(0.25)
    else:
        raise AssertionError(f"{what}: cannot be clicked: {last.get('why', 'it keeps moving')}")
    x, y = last["xy"]
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        page.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                               "buttons": 1 if kind == "mousePressed" else 0, "clickCount": 1})


#: the template dialog, as a CSS selector
DIALOG_SEL = '[aria-labelledby="global-workflow-template-selector"]'
DIALOG = f"document.querySelector('{DIALOG_SEL}')"
PACK_CATEGORY = (f"[...document.querySelectorAll('{DIALOG_SEL} nav [role=button]')]"
                 f".find(e => e.textContent.trim() === {json.dumps(PACK_NAME)})")


def press_escape(page) -> None:
    for kind in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", {"type": kind, "key": "Escape", "code": "Escape",
                                             "windowsVirtualKeyCode": 27})


def open_dialogs(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('[role=dialog]')]"
                         ".map(d => (d.getAttribute('aria-labelledby') || '') + ': ' + d.textContent.slice(0, 200))")


CLOSE_BUTTON = ("[...document.querySelectorAll('[role=dialog] button')]"
                ".find(b => b.querySelector('.pi-times') || /close/i.test(b.getAttribute('aria-label') || ''))")


def close_dialogs(page) -> None:
    """Close what a previous test left open, as a user would: Escape, else the dialog's X."""
    for attempt in range(4):
        if not open_dialogs(page):
            return
        if attempt % 2 == 0:
            press_escape(page)
        else:
            click(page, CLOSE_BUTTON, "the dialog's close button", timeout=5)
        time.sleep(0.5)
    raise AssertionError(f"a dialog does not close: {open_dialogs(page)}")


def card(name: str) -> str:
    return f"document.querySelector('[data-testid=\"template-workflow-{name}\"]')"


#: the dialog's "Extensions" group title (a collapsible group: a click on it hides the pack's entry),
#: when it is collapsed
EXTENSIONS_COLLAPSED = (f"[...document.querySelectorAll('{DIALOG_SEL} nav h3')]"
                        ".filter(h => h.textContent.trim().toLowerCase() === 'extensions')"
                        ".map(h => h.parentElement).find(t => t.querySelector('.pi-chevron-right'))")
NAV_TEXTS = (f"[...document.querySelectorAll('{DIALOG_SEL} nav h3, {DIALOG_SEL} nav [role=button]')]"
             ".map(e => e.textContent.trim())")


def open_template_dialog_on_pack(page) -> None:
    """The template dialog open on the pack's entry, its cards shown; as a user would: reopen the
    dialog when the entry does not show, unfold the Extensions group when it is folded (a click
    that lands on its title while the list lays out folds it), reload the page at last."""
    seen = []
    for attempt in range(3):
        if attempt == 2:
            load_page(page, page.host.url)
        close_dialogs(page)
        click(page, "document.querySelector('button[aria-label=\"Templates\"]')", "the side bar's Templates button")
        # the dialog lists its categories first and selects one when its template index has loaded:
        # click the pack's entry once cards show, again if that selection came after the click
        page.wait_for(f"!!{DIALOG} && document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length > 0",
                      timeout=30)
        for _ in range(2):
            if page.evaluate(f"!{PACK_CATEGORY} && !!{EXTENSIONS_COLLAPSED}"):
                seen.append(f"attempt {attempt + 1}: the Extensions group was folded; unfolding it")
                click(page, EXTENSIONS_COLLAPSED, "the template dialog's folded 'Extensions' group", timeout=10)
                time.sleep(0.5)
            try:
                click(page, PACK_CATEGORY, f"the template dialog's {PACK_NAME!r} entry", timeout=10)
                page.wait_for(f"!!{card(TEMPLATES[0])}", timeout=5)
                if seen:
                    print("\nthe template dialog opened on the pack after:\n" + "\n".join(seen))
                return
            except Exception as exc:
                seen.append(f"attempt {attempt + 1}: {exc}; the dialog's list: {page.evaluate(NAV_TEXTS)}")
    raise AssertionError(f"the template dialog shows no card for {TEMPLATES[0]!r} under {PACK_NAME!r}:\n"
                         + "\n".join(seen))


def settle(page, seconds: float = 1.0) -> None:
    """Let the front end finish what it does after a load (dialogs open asynchronously), with two
    drawn frames at the end."""
    time.sleep(seconds)
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


GRAPH_STATE = r"""(() => {
    const text = document.body.innerText;
    return {
        nodes: app.graph.nodes.map(n => ({
            id: String(n.id), type: n.type, comfyClass: n.comfyClass || null,
            ctor: n.constructor.comfyClass || null,
            registered: !!(window.LiteGraph && LiteGraph.registered_node_types[n.type]),
            placeholder: !!n.last_serialization, has_errors: !!n.has_errors,
            widgets: (n.widgets || []).map(w => w.name),
            live: (n.widgets || []).filter(w => w.serialize !== false).map(w => w.value),
            live_by_name: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
            widgets_values: n.serialize().widgets_values ?? [],
            color: n.color || null,
            title: n.title,
            rect: Array.from(n.boundingRect ?? (() => { const o = new Float32Array(4); n.getBounding(o); return o; })()),
        })),
        links: app.graph.serialize().links.length,
        missing_dialogs: [...document.querySelectorAll(
            '[aria-labelledby=global-missing-nodes], [aria-labelledby=global-missing-models-warning]')]
            .map(d => d.textContent.slice(0, 300)),
        notices: (text.match(/[^\n]*(missing nodes?|missing models?|\d+ errors? found)[^\n]*/gi) || []),
    };
})()"""


def same(a, b) -> bool:
    """JSON equality with numbers compared as numbers (20.0 == 20) and a float tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check_graph(template: dict, state: dict, api: dict | None = None) -> list[str]:
    """Problems of the drawn graph against the template (and, where given, against the API-format
    version of the template, which names each widget's value)."""
    problems = []
    if state["missing_dialogs"]:
        problems.append(f"the front end shows a missing nodes/models dialog: {state['missing_dialogs']}")
    if state["notices"]:
        problems.append(f"the page shows: {state['notices']}")
    if len(state["nodes"]) != len(template["nodes"]):
        problems.append(f"{len(state['nodes'])} nodes on the canvas, the template has {len(template['nodes'])}")
    if state["links"] != len(template["links"]):
        problems.append(f"{state['links']} links on the canvas, the template has {len(template['links'])}")
    drawn = {n["id"]: n for n in state["nodes"]}
    for tn in template["nodes"]:
        node = drawn.get(str(tn["id"]))
        label = f"node {tn['id']} ({tn['type']})"
        if node is None:
            problems.append(f"{label}: not on the canvas")
            continue
        if node["type"] != tn["type"]:
            problems.append(f"{label}: drawn as type {node['type']!r}")
        if not node["registered"] or node["ctor"] != tn["type"] or node["placeholder"]:
            problems.append(f"{label}: drawn as a missing-node placeholder (registered={node['registered']}, "
                            f"class={node['ctor']!r})")
        if node["has_errors"]:
            problems.append(f"{label}: flagged with errors by the front end")
        want = tn.get("widgets_values", [])
        if not same(node["widgets_values"], want):
            problems.append(f"{label}: the front end's widget values {node['widgets_values']} differ from the "
                            f"template's widgets_values {want} ({len(want)} values for {len(node['widgets'])} "
                            f"widgets {node['widgets']})")
        elif not same(node["live"], want):
            problems.append(f"{label}: widgets show {node['live']}, the template sets {want}")
        for wname, value in (api or {}).get(str(tn["id"]), {}).get("inputs", {}).items():
            if isinstance(value, list) or wname not in node["widgets"]:
                continue                        # a link, or an input without a widget
            shown = node["live_by_name"].get(wname)
            if not same(shown, value):
                problems.append(f"{label}: widget {wname!r} shows {shown!r}, the template's API version sets "
                                f"{value!r}")
        if tn["type"].startswith("Realiz3D") and not tn.get("color") and not node["color"]:
            problems.append(f"{label}: not coloured by the pack's extension (nodeCreated did not run)")
    problems += overlaps(state["nodes"])
    return problems


def overlaps(nodes, tolerance: float = 2.0) -> list[str]:
    """Nodes drawn on top of each other (some of their widgets hidden under another node), by their
    bounding boxes (title bar included) as the front end sized them."""
    out = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["rect"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["rect"]
            w = min(ax + aw, bx + bw) - max(ax, bx)
            h = min(ay + ah, by + bh) - max(ay, by)
            if w > tolerance and h > tolerance:
                out.append(f"node {a['id']} ({a['title']}) and node {b['id']} ({b['title']}) overlap by "
                           f"{w:.0f} x {h:.0f} px: part of one is hidden under the other")
    return out


# -- the tests -------------------------------------------------------------------------------------
def test_page_loads_with_the_pack(page):
    version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || null")
    print(f"\nComfyUI {HOST}, front end {version}, Chromium {page.send('Browser.getVersion', session=False)['product']}")
    assert WEB_FILES and extension_names(), "the pack has no web extension to test"
    settle(page, 1.5)
    shot = page.screenshot(os.path.join(ARTIFACTS, "page_loaded.png"))
    print(f"screenshot: {shot}")
    problems = check_extension_once(page)
    pack, _, other = split_console(page.console_messages())
    report_other(other, "while the page loaded")
    if pack:
        problems.append("console errors from the pack:\n" + fmt(pack))
    assert not problems, "\n".join(problems)


ACTIVE_WORKFLOW = "app.extensionManager.workflow.activeWorkflow?.filename ?? null"


def wait_until_open(page, name: str, timeout: float = 60, before: str | None = None) -> None:
    """Until the dialog has closed and the template is the active workflow, drawn. Fails at once
    when another workflow than ``before`` (the one active before the click) and ``name`` opened:
    the click landed on another card."""
    probe = f"""(() => ({{
        dialog_open: !!{DIALOG},
        active: {ACTIVE_WORKFLOW},
        nodes: app.graph.nodes.length,
    }}))()"""
    t0 = time.time()
    while True:
        state = page.evaluate(probe)
        # the same template opened before in this page gets a numbered name: 'texture_mesh (2)'
        same = state["active"] == name or re.fullmatch(re.escape(name) + r" \(\d+\)", state["active"] or "")
        if not state["dialog_open"] and same and state["nodes"] > 0:
            return
        if not same and state["active"] not in (before, None):
            raise AssertionError(f"the click opened another workflow: {state}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"not open after {timeout:.0f} s: {state}")
        time.sleep(0.25)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_opens_from_the_template_dialog(page, name):
    with open(os.path.join(ROOT, "example_workflows", f"{name}.json")) as f:
        template = json.load(f)
    api_path = os.path.join(ROOT, "example_workflows", "api", f"{name}.json")
    api = json.load(open(api_path)) if os.path.exists(api_path) else None
    mark = page.mark()
    t0 = time.time()
    try:
        misses = []
        for attempt in range(3):
            # a click that lands while the card grid is still laying out is lost, or opens the card
            # that moved under it: open the dialog again and click again, as a user would
            open_template_dialog_on_pack(page)
            before = page.evaluate(ACTIVE_WORKFLOW)
            click(page, card(name), f"template card {name!r} in the dialog")
            try:
                page.wait_for(f"!{DIALOG}", timeout=15)
                wait_until_open(page, name, timeout=30, before=before)
                break
            except Exception as exc:
                misses.append(f"attempt {attempt + 1}: {exc}")
                if attempt == 2:
                    raise AssertionError("\n".join(misses)) from None
        if misses:
            print(f"\n{name}: opened after {len(misses)} missed click(s):\n" + "\n".join(misses))
    except Exception as exc:
        shot = page.screenshot(os.path.join(ARTIFACTS, f"{name}.failed.png"))
        pack, _, other = split_console(page.console_messages(mark))
        raise AssertionError(f"{name} did not open from the template dialog: {exc}\nscreenshot: {shot}\n"
                             f"console errors from the pack:\n{fmt(pack)}\nother console errors:\n{fmt(other)}") from None
    settle(page)
    state = page.evaluate(GRAPH_STATE)
    page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.evaluate("app.canvas.setDirty(true, true)")
    settle(page, 0.5)
    shot = page.screenshot(os.path.join(ARTIFACTS, f"{name}.png"))
    print(f"\n{name}: opened in {time.time() - t0:.1f} s, {len(state['nodes'])} nodes; screenshot: {shot}")
    problems = check_graph(template, state, api)
    pack, _, other = split_console(page.console_messages(mark))
    report_other(other, f"while {name} opened")
    if pack:
        problems.append("console errors from the pack:\n" + fmt(pack))
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_template_dialog_finds_a_thumbnail_per_template(page):
    open_template_dialog_on_pack(page)
    page.wait_for(f"document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length >= {len(TEMPLATES)}",
                  timeout=30)
    settle(page, 2.0)                       # the cards fetch their thumbnails lazily
    close_dialogs(page)
    # the whole session: the front end remembers a failed thumbnail and does not ask again when
    # the dialog reopens (the template tests above opened it first)
    _, thumbs, _ = split_console(page.console_messages())
    missing = sorted({THUMBNAIL.search(f"{m['text']} {m['source']}").group(0).rsplit("/", 1)[1] for m in thumbs})
    assert not missing, (f"the template dialog asks for a thumbnail per template and gets 404 for {missing}: "
                         f"ship example_workflows/<template>.jpg (a console error per card)")


def test_console_check_catches_an_extension_served_twice(chromium, tmp_path):
    """A folder beside the pack serves a copy of the pack's JS (what WEB_DIRECTORY plus
    pyproject's [tool.comfy] web once did): the checks above must fail on it."""
    dup = tmp_path / "Realiz3D-served-twice"
    (dup / "web").mkdir(parents=True)
    (dup / "__init__.py").write_text('WEB_DIRECTORY = "./web"\nNODE_CLASS_MAPPINGS = {}\n')
    for f in WEB_FILES:
        shutil.copyfile(os.path.join(ROOT, "web", f), dup / "web" / f)
    srv = start_host(tmp_path / "base", extra_nodes=[str(dup)])
    try:
        b = open_page(chromium, srv.url)
        try:
            b.host = srv
            settle(b, 1.5)
            problems = check_extension_once(b)
            pack, _, _ = split_console(b.console_messages())
        finally:
            b.close()
    finally:
        srv.stop()
    assert any("time(s), expected once" in p for p in problems), problems
    assert any("already registered" in m["text"] for m in pack), fmt(pack) or "no pack console error seen"
