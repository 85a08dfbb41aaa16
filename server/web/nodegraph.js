// nodegraph's extension of ComfyUI's frontend (served by nodegraph at /extensions/nodegraph/nodegraph.js).
// A first visit shows ComfyUI's stock default graph, whose nodes nodegraph does not have; open nodegraph's
// main workflow instead, so the canvas starts with something that runs.
import { app } from "../../scripts/app.js";

const MAIN_WORKFLOW = "workflows/nodegraph/dalle2_text2img.json";

async function openMainWorkflowInsteadOfTheStockGraph() {
  // Wait for the frontend to have put its own first graph on the canvas (it does so after setup).
  for (let waited = 0; waited < 30000 && !(app.graph?._nodes?.length > 0); waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const known = LiteGraph.registered_node_types;
  const nodes = app.graph?._nodes ?? [];
  if (nodes.length > 0 && nodes.every((node) => node.type in known)) return; // the user's own graph
  const reply = await fetch(`api/userdata/${encodeURIComponent(MAIN_WORKFLOW)}`);
  if (reply.ok) await app.loadGraphData(await reply.json(), true, true, "dalle2_text2img");
}

app.registerExtension({
  name: "nodegraph.startWorkflow",
  setup() {
    openMainWorkflowInsteadOfTheStockGraph(); // not awaited: the frontend finishes starting meanwhile
  },
});
