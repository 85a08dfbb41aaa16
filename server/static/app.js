// The nodegraph GUI: one websocket for prompts and events, plain fetch for the catalogue and files.
// No framework, no build step. A ?token=... in the page URL is passed on to every request.
"use strict";

const token = new URLSearchParams(location.search).get("token");
// randomUUID exists only in secure contexts (https, localhost); getRandomValues everywhere.
const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
const clientId = sessionStorage.getItem("nodegraph-client") || newId();
sessionStorage.setItem("nodegraph-client", clientId);
const $ = (id) => document.getElementById(id);

let catalogue = {};
let socket = null;
let currentPrompt = null;
let previewUrl = null;

function withToken(path, params = {}) {
  const query = new URLSearchParams(params);
  if (token) query.set("token", token);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").prepend(line);
}

// ------------------------------------------------------------------ node catalogue

async function loadCatalogue() {
  const reply = await fetch(withToken("/object_info"));
  if (!reply.ok) throw new Error(`/object_info: ${reply.status} ${await reply.text()}`);
  catalogue = await reply.json();
  const byCategory = {};
  for (const [name, info] of Object.entries(catalogue)) (byCategory[info.category] ||= []).push(name);
  const list = $("nodes");
  list.textContent = "";
  list.classList.remove("muted");
  for (const [category, names] of Object.entries(byCategory)) {
    const group = document.createElement("details");
    const title = document.createElement("summary");
    title.textContent = `${category} (${names.length})`;
    group.append(title);
    for (const name of names) {
      const item = document.createElement("div");
      item.className = "node";
      item.textContent = name;
      item.title = catalogue[name].description || "";
      item.onclick = () => showNode(name);
      group.append(item);
    }
    list.append(group);
  }
}

function showNode(name) {
  const info = catalogue[name];
  const inputs = Object.entries(info.inputs).map(([input, spec]) => {
    const extras = [];
    if ("default" in spec) extras.push(`default ${JSON.stringify(spec.default)}`);
    if ("min" in spec || "max" in spec) extras.push(`range [${spec.min ?? ""}..${spec.max ?? ""}]`);
    if (spec.choices) extras.push(`one of ${spec.choices.map((c) => JSON.stringify(c)).join(", ")}`);
    if (spec.optional) extras.push("optional");
    return `  ${input}: ${spec.type}${extras.length ? "  (" + extras.join("; ") + ")" : ""}`;
  });
  const outputs = info.outputs.map((out) => `  ${out.name}: ${out.type}`);
  const box = $("node-info");
  box.hidden = false;
  box.textContent = `${name}${info.output_node ? "  [output]" : ""}\n${info.description || ""}\n\ninputs:\n` +
    `${inputs.join("\n") || "  none"}\noutputs:\n${outputs.join("\n") || "  none"}`;
}

// ------------------------------------------------------------------ workflow and params

function parseWorkflow() {
  $("workflow-error").textContent = "";
  const text = $("workflow").value.trim();
  if (!text) return null;
  try {
    const value = JSON.parse(text);
    if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error("not a JSON object");
    return value;
  } catch (error) {
    $("workflow-error").textContent = `Not a workflow: ${error.message}`;
    return null;
  }
}

function isWrapped(workflow) {
  return workflow && typeof workflow.nodes === "object" && workflow.nodes !== null && !("class_type" in workflow.nodes);
}

function renderParams() {
  const box = $("params");
  box.textContent = "";
  const workflow = parseWorkflow();
  if (!isWrapped(workflow) || !workflow.params) return;
  for (const [name, spec] of Object.entries(workflow.params)) {
    const node = workflow.nodes[spec.node] || {};
    const inputSpec = ((catalogue[node.class_type] || {}).inputs || {})[spec.input] || {};
    const current = (node.inputs || {})[spec.input] ?? inputSpec.default ?? "";
    const label = document.createElement("label");
    const field = document.createElement("input");
    field.dataset.param = name;
    field.value = typeof current === "string" ? current : JSON.stringify(current);
    label.append(`${name} `, field, ` ${spec.description || ""} (${inputSpec.type || "?"})`);
    box.append(label);
  }
}

function paramValues() {
  // Sent as typed: the server parses text into the input's type ("7" -> 7 for INT, "true" for BOOLEAN).
  const values = {};
  for (const field of document.querySelectorAll("#params input[data-param]")) values[field.dataset.param] = field.value;
  return values;
}

// ------------------------------------------------------------------ the websocket

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${withToken("/ws", { clientId })}`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { $("connection").textContent = `connected as ${clientId.slice(0, 8)}`; };
  socket.onclose = (event) => {
    $("connection").textContent = `disconnected (${event.code} ${event.reason || ""}); retrying…`;
    setTimeout(connect, 2000);
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onPreview(event.data);
  };
}

function send(type, data = {}) {
  if (!socket || socket.readyState !== WebSocket.OPEN) { log("not connected"); return; }
  socket.send(JSON.stringify({ type, data }));
}

function onPreview(buffer) {
  // ComfyUI's layout: u32 event type (1 = preview), u32 image format (2 = PNG), then the image.
  const view = new DataView(buffer);
  if (buffer.byteLength < 8 || view.getUint32(0) !== 1) return;
  const mime = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(new Blob([buffer.slice(8)], { type: mime }));
  $("preview").src = previewUrl;
  $("preview").hidden = false;
}

function onMessage({ type, data }) {
  switch (type) {
    case "status":
      $("queue").textContent = `${data.status.exec_info.queue_remaining} remaining`;
      return;
    case "prompt_queued":
      currentPrompt = data.prompt_id;
      log(`queued ${data.prompt_id} (#${data.number})`);
      return;
    case "prompt_error":
      $("run-error").textContent = [data.error.message, data.error.details].filter(Boolean).join("\n");
      return;
    case "execution_start":
      currentPrompt = data.prompt_id;
      $("run-error").textContent = "";
      $("outputs").textContent = "";
      $("preview").hidden = true;
      setProgress(0, 1, "");
      break;
    case "execution_cached":
      if (data.nodes.length) log(`cached: ${data.nodes.join(", ")}`);
      return;
    case "executing":
      if (data.node === null) { setProgress(1, 1, "done"); log(`finished ${data.prompt_id}`); return; }
      setProgress(0, 1, `node ${data.node}`);
      break;
    case "progress":
      setProgress(data.value, data.max, `node ${data.node}: ${data.value}/${data.max}`);
      return;
    case "executed":
      showOutput(data.node, data.output);
      break;
    case "execution_error":
      $("run-error").textContent =
        `node ${data.node_id} (${data.node_type}) failed: ${data.exception_type}: ${data.exception_message}`;
      break;
    case "execution_interrupted":
      $("run-error").textContent = "interrupted";
      break;
    case "error":
      $("run-error").textContent = `server: ${data.message}`;
      break;
  }
  log(`${type} ${JSON.stringify(data).slice(0, 200)}`);
}

function setProgress(value, max, text) {
  $("progress").max = max || 1;
  $("progress").value = value;
  $("progress-text").textContent = text;
}

function showOutput(node, output) {
  const box = document.createElement("div");
  for (const image of output.images || []) {
    const picture = document.createElement("img");
    picture.src = withToken("/view", { filename: image.filename, subfolder: image.subfolder, type: image.type });
    picture.title = `${node}: ${image.filename}`;
    box.append(picture);
  }
  const rest = Object.fromEntries(Object.entries(output).filter(([key]) => key !== "images"));
  if (Object.keys(rest).length) {
    const text = document.createElement("pre");
    text.className = "info";
    text.textContent = `${node}: ${JSON.stringify(rest, null, 1)}`;
    box.append(text);
  }
  $("outputs").append(box);
}

// ------------------------------------------------------------------ wiring

$("file").onchange = async () => {
  const file = $("file").files[0];
  if (file) { $("workflow").value = await file.text(); renderParams(); }
};
$("workflow").oninput = renderParams;
$("submit").onclick = () => {
  const workflow = parseWorkflow();
  if (!workflow) return;
  const data = { prompt: workflow };
  if (isWrapped(workflow) && workflow.params) data.params = paramValues();
  send("prompt", data);
};
$("interrupt").onclick = () => send("interrupt", currentPrompt ? { prompt_id: currentPrompt } : {});

loadCatalogue().then(renderParams, (error) => { $("nodes").textContent = String(error); });
connect();
