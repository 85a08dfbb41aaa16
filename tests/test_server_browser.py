"""End to end in a real browser: ComfyUI's official frontend, served by nodegraph, driven by Playwright on
Debian's chromium. Open the GUI, open dalle2_text2img from the workflow browser, change the prompt, run it,
watch the running node and its previews, see the image on the save node; interrupt a long run; see a
validation error outlined on its node with nodegraph's message; drop an output PNG and get the graph back.

Screenshots go to $TMPDIR/nodegraph-browser-screenshots/ (printed in the test log). The tests skip, saying
why, only when chromium (/usr/bin/chromium) or the playwright package is missing; .ci/run installs both.
Runs are slowed to ~0.15 s per sampler step (a test-only hook in the event relay) so the browser can be seen
following them on a machine of any speed; workflows use a few steps.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodegraph.engine.api import Engine
from nodegraph.engine.registry import Registry
from nodegraph.server import worker
from nodegraph.server.background import BackgroundServer
from nodegraph.server.config import ServerConfig

from test_server_support import http

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}: apt-get install chromium"),
]

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(tempfile.gettempdir()) / "nodegraph-browser-screenshots"
WAIT_MS = 120_000
STEP_DELAY = 0.15
EVENTS = ["executing", "progress", "progress_state", "b_preview", "b_preview_with_metadata", "executed",
          "execution_start", "execution_success", "execution_error", "execution_interrupted"]
HOOK = """() => {
  const api = window.comfyAPI.api.api; window.__events = [];
  for (const type of EVENTS)
    api.addEventListener(type, (e) => window.__events.push([type, type.startsWith('b_') ? (e.detail.nodeId ?? null)
                                                                                       : e.detail]));
}""".replace("EVENTS", json.dumps(EVENTS))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("browser")
    (root / "input").mkdir()
    engine = Engine("cpu", input_dir=root / "input", output_dir=root / "output",
                    registry=Registry.discover(plugins=False))
    original = worker.EventRelay._progress

    def slowed(self: worker.EventRelay, data: dict[str, Any]) -> Any:
        time.sleep(STEP_DELAY)  # on the worker thread: the run, not the server, slows down
        return original(self, data)

    worker.EventRelay._progress = slowed  # type: ignore[method-assign]
    config = ServerConfig(port=0, state_dir=root / "state", output_dir=root / "output", input_dir=root / "input")
    try:
        with BackgroundServer(config, engine) as background:
            yield background
    finally:
        worker.EventRelay._progress = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {SHOTS}")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


class Gui:
    """One fresh browser context on the GUI, recording every request that leaves the server's origin."""

    def __init__(self, browser: Any, server: BackgroundServer) -> None:
        self.base = server.url("/").rstrip("/")
        # bypass_csp: to see every request the frontend itself *tries* (the page's CSP would block them).
        self.context = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
        self.page = self.context.new_page()
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(self.base + "/", wait_until="load")
        self.page.wait_for_function("() => window.app && window.app.graph && window.comfyAPI?.api?.api")
        self.page.evaluate(HOOK)

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.base, "data:", "blob:")):
            self.outside.append(request.url)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def open_workflow(self, name: str) -> None:
        sidebar = self.page.get_by_role("button", name="Workflows").first
        sidebar.click()
        self.page.get_by_text("nodegraph", exact=True).first.click()
        self.page.get_by_text(name, exact=True).first.click()
        self.page.wait_for_function(f"() => app.graph.extra?.nodegraph?.source === {json.dumps(name)}")
        sidebar.click()  # close the sidebar: the canvas is what the tests look at

    def node_id(self, title: str) -> int:
        return self.page.evaluate(f"() => app.graph._nodes.find(n => n.title === {json.dumps(title)}).id")

    def set_widget(self, title: str, widget: str, value: Any) -> None:
        self.page.evaluate(
            """([title, widget, value]) => {
                const node = app.graph._nodes.find(n => n.title === title);
                node.widgets.find(w => w.name === widget).value = value; }""",
            [title, widget, value],
        )

    def events(self, type_: str | None = None) -> list[Any]:
        found = self.page.evaluate("() => window.__events")
        return [event for event in found if type_ is None or event[0] == type_]

    def run(self) -> None:
        self.page.get_by_role("button", name="Run", exact=True).first.click()

    def wait_event(self, type_: str) -> Any:
        self.page.wait_for_function(f"() => window.__events.some(e => e[0] === {json.dumps(type_)})")
        return self.events(type_)[-1][1]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def gui(browser: Any, server: BackgroundServer) -> Iterator[Gui]:
    opened = Gui(browser, server)
    try:
        yield opened
    finally:
        assert opened.outside == [], f"the frontend reached outside the server: {opened.outside[:5]}"
        opened.close()


def fast(gui: Gui) -> None:
    for title in ("prior", "decode", "upsample"):
        gui.set_widget(title, "steps", 3)


def test_the_gui_starts_and_shows_nodegraphs_nodes_as_comfyui_nodes(gui: Gui, server: BackgroundServer) -> None:
    status, headers, _ = http("GET", server.url("/"))
    assert "connect-src 'self'" in headers["Content-Security-Policy"]  # the page may talk to this server only
    # A first visit starts on nodegraph's main workflow (nodegraph's extension), not ComfyUI's stock graph.
    gui.page.wait_for_function("() => app.graph._nodes.some((node) => node.type === 'Decoder')")
    gui.shot("00-first-visit")
    gui.open_workflow("dalle2_text2img")
    gui.shot("01-dalle2-opened")
    nodes = gui.page.evaluate("""() => app.graph._nodes.map(n => ({title: n.title, type: n.type,
        outputs: (n.outputs || []).map(o => o.name), widgets: (n.widgets || []).map(w => [w.name, w.type])}))""")
    by_title = {node["title"]: node for node in nodes}
    assert set(by_title) >= {"clip", "text", "prior", "decode", "upsample", "save", "noise"}
    assert ["text", "customtext"] in by_title["text"]["widgets"]  # multiline text box
    assert ["sampler", "combo"] in by_title["decode"]["widgets"]  # choices as a combo
    assert by_title["prior"]["outputs"] == ["image_embed"]  # output names
    tooltip = gui.page.evaluate(
        "() => LiteGraph.registered_node_types.Decoder.nodeData.inputs.steps.tooltip")
    assert tooltip == server.server.engine.catalogue()["Decoder"]["inputs"]["steps"]["description"]
    assert gui.errors == []


def test_open_edit_run_watch_and_see_the_image(gui: Gui, server: BackgroundServer) -> None:
    gui.open_workflow("dalle2_text2img")
    caption = "a small green cross at the top on a white background"
    box = gui.page.locator("textarea").first
    box.fill(caption)  # typed into the TextEncode node's text box, as a user would
    fast(gui)
    decoder = gui.node_id("decode")
    save = gui.node_id("save")
    gui.run()
    seen: list[Any] = []
    shot = False
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline and not gui.events("execution_success"):
        state = gui.page.evaluate("() => [app.runningNodeId, app.progress]")
        seen.append(state)
        if not shot and str(state[0]) == str(decoder) and state[1] and state[1]["value"] >= 1:
            gui.shot("02-decoder-running-with-progress")
            shot = True
        time.sleep(0.05)
    assert gui.events("execution_success"), gui.events()[-5:]
    running = [(str(node), progress["max"]) for node, progress in seen if node is not None and progress]
    assert (str(decoder), 3) in running  # the decoder was shown running, with its step count
    assert str(decoder) in [str(node) for _, node in gui.events("b_preview_with_metadata")]  # its previews
    gui.page.wait_for_function(f"() => (app.graph.getNodeById({save}).imgs || []).length > 0")
    gui.shot("03-image-on-the-save-node")
    outputs = gui.page.evaluate(f"() => app.nodeOutputs['{save}']")
    [image] = outputs["images"]
    prompt_id = gui.events("execution_success")[-1][1]["prompt_id"]
    entry = http("GET", server.url(f"/history/{prompt_id}"))[2][prompt_id]
    assert entry["prompt"][2][str(gui.node_id("text"))]["inputs"]["text"] == caption
    status, _, body = http("GET", server.url("/view", **image))
    assert status == 200 and body.startswith(b"\x89PNG")


def test_interrupt_a_long_run(gui: Gui, server: BackgroundServer) -> None:
    gui.open_workflow("dalle2_text2img")
    fast(gui)
    gui.set_widget("decode", "steps", 400)  # about a minute at the slowed pace: it must be stopped
    decoder = str(gui.node_id("decode"))
    gui.run()
    gui.page.wait_for_function(f"() => String(app.runningNodeId) === '{decoder}' && app.progress?.value >= 2")
    gui.shot("04-long-run")
    gui.page.get_by_role("button", name="Cancel current run").first.click()
    interrupted = gui.wait_event("execution_interrupted")
    assert str(interrupted["node_id"]) == decoder
    entry = http("GET", server.url(f"/history/{interrupted['prompt_id']}"))[2][interrupted["prompt_id"]]
    assert entry["nodegraph"]["status"] == "interrupted"
    gui.shot("05-interrupted")


def test_a_validation_error_is_outlined_on_its_node_with_nodegraphs_message(gui: Gui, server: BackgroundServer) -> None:
    gui.open_workflow("dalle2_text2img")
    prior = gui.node_id("prior")
    gui.page.evaluate(
        """(id) => { const node = app.graph.getNodeById(id);
                    node.disconnectInput(node.inputs.findIndex((i) => i.name === 'text')); }""",
        prior,
    )
    gui.run()
    gui.page.wait_for_function(f"() => app.lastNodeErrors && app.lastNodeErrors['{prior}']")
    errors = gui.page.evaluate(f"() => app.lastNodeErrors['{prior}'].errors")
    [error] = [error for error in errors if error["extra_info"].get("input_name") == "text"]
    assert error["type"] == "required_input_missing"  # ComfyUI's type: the frontend marks the input slot
    # nodegraph's own message, word for word, as `nodegraph validate` prints it
    workflow = json.loads((Path(__file__).parent.parent / "workflows" / "dalle2_text2img.json").read_text())
    del workflow["nodes"]["prior"]["inputs"]["text"]
    issues = server.server.engine.validate(workflow)
    assert error["message"] == error["details"]
    assert error["message"] in [issue.message for issue in issues if issue.node == "prior"]
    assert gui.page.evaluate(f"() => app.graph.getNodeById({prior}).has_errors") is True  # outlined in red
    gui.shot("06-validation-error-outlined")
    gui.page.get_by_role("button", name="View details").first.click()  # the frontend's issues panel
    gui.page.get_by_text("prior - text").first.wait_for()
    gui.shot("07-validation-error-details")


def test_dropping_an_output_png_restores_the_graph(gui: Gui, server: BackgroundServer) -> None:
    gui.open_workflow("dalle2_text2img")
    fast(gui)
    gui.set_widget("noise", "seed", 7)
    before = graph_summary(gui)
    save = gui.node_id("save")
    gui.run()
    gui.wait_event("execution_success")
    [image] = gui.page.evaluate(f"() => app.nodeOutputs['{save}'].images")
    png = http("GET", server.url("/view", **image))[2]
    gui.page.get_by_role("button", name="Create a new blank workflow").first.click()
    gui.page.wait_for_function("() => app.graph._nodes.length === 0")
    gui.page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            const target = document.querySelector('#graph-canvas') || document;
            target.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(png).decode(),
    )
    gui.page.wait_for_function("() => app.graph._nodes.length > 0")
    gui.shot("07-dropped-png")
    assert graph_summary(gui) == before


def graph_summary(gui: Gui) -> list[Any]:
    return gui.page.evaluate("""() => app.graph._nodes.map(n => [n.id, n.type, n.title,
        (n.widgets || []).filter(w => w.name !== 'control_after_generate').map(w => [w.name, w.value]),
        (n.inputs || []).map(i => [i.name, i.link != null])]).sort((a, b) => a[0] - b[0])""")
