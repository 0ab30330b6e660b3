// The drawing page: one canvas, labels with example drawings, and POST /v1/predict.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const canvas = $("#canvas");
const pen = canvas.getContext("2d");
const KEY_STORE = "innerloop-api-key";
let drawn = false; // has the canvas any ink since the last clear?

// ---- the canvas: pointer events cover mouse, pen and touch ------------------------------
function clearCanvas() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, canvas.width, canvas.height);
  drawn = false;
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * canvas.width) / box.width,
    ((event.clientY - box.top) * canvas.height) / box.height,
  ];
}

function setUpCanvas() {
  pen.lineWidth = canvas.width / 28; // a stroke about one pixel of the model's 28x28 input
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.strokeStyle = "#000";
  clearCanvas();
  let last = null;
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = canvasPoint(event);
    pen.beginPath();
    pen.arc(last[0], last[1], pen.lineWidth / 2, 0, 2 * Math.PI);
    pen.fillStyle = "#000";
    pen.fill();
    drawn = true;
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const point = canvasPoint(event);
    pen.beginPath();
    pen.moveTo(last[0], last[1]);
    pen.lineTo(point[0], point[1]);
    pen.stroke();
    last = point;
    event.preventDefault();
  });
  const stop = () => { last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
}

// ---- talking to the server -------------------------------------------------------------
function headers() {
  const key = $("#api-key").value.trim();
  const out = { "content-type": "application/json" };
  if (key) out["X-API-Key"] = key;
  return out;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = text; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    if (response.status === 401) detail += " (type the server's API key above)";
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ---- models ----------------------------------------------------------------------------
let models = {};

async function loadModels() {
  const select = $("#model");
  try {
    const listing = await call("GET", "/v1/models");
    models = {};
    select.replaceChildren();
    for (const card of listing.models) {
      if (card.task !== "classification" || !card.input || card.input.kind !== "image") continue;
      models[card.name] = card;
      const option = document.createElement("option");
      option.value = card.name;
      option.textContent = card.name;
      option.selected = card.name === listing.default;
      select.append(option);
    }
    if (!select.options.length) {
      setStatus("This server serves no image classification model.", true);
      return;
    }
    showModel();
    setStatus("Add examples, then draw a query.");
  } catch (error) {
    setStatus(`Could not list the models: ${error.message}`, true);
  }
}

function showModel() {
  const card = models[$("#model").value];
  if (!card) return;
  const loop = card.inner_loop || {};
  const ways = card.ways ? `${card.ways.min} to ${card.ways.max} labels` : "";
  const data = card.trained_on || {};
  const trainedOn = typeof data === "string" ? data : data.dataset || "?";
  $("#model-info").textContent =
    `${card.name}: ${card.algorithm || "?"} on ${trainedOn}; ${ways}; ` +
    `adapts ${loop.steps ?? "?"} steps of ${loop.lr ?? "?"} per request`;
}

// ---- labels and their examples ---------------------------------------------------------
function addLabel(name) {
  const item = $("#label-template").content.firstElementChild.cloneNode(true);
  const count = $("#labels").children.length;
  $(".label-name", item).value = name || String.fromCharCode(65 + (count % 26));
  $(".add-drawing", item).addEventListener("click", () => {
    if (!drawn) {
      setStatus("Draw something first, then press Add drawing.", true);
      return;
    }
    addExample(item, canvas.toDataURL("image/png"));
    clearCanvas();
    setStatus(`Added a drawing to "${$(".label-name", item).value}".`);
  });
  $(".label-files", item).addEventListener("change", async (event) => {
    for (const file of event.target.files) addExample(item, await readFile(file));
    event.target.value = "";
  });
  $(".remove-label", item).addEventListener("click", () => item.remove());
  $("#labels").append(item);
  return item;
}

function addExample(item, dataUrl) {
  const image = document.createElement("img");
  image.src = dataUrl;
  image.alt = "example (click to remove)";
  image.title = "click to remove";
  image.addEventListener("click", () => image.remove());
  $(".examples", item).append(image);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function supportSet() {
  const support = [];
  const names = new Set();
  for (const item of $("#labels").children) {
    const name = $(".label-name", item).value.trim();
    const examples = [...item.querySelectorAll(".examples img")];
    if (!examples.length) continue;
    if (!name) throw new Error("every label with examples needs a name");
    if (names.has(name)) throw new Error(`two labels are called "${name}"`);
    names.add(name);
    for (const image of examples) support.push({ x: image.src, y: name });
  }
  if (names.size < 2) throw new Error("give at least two labels one example each");
  return support;
}

// ---- predicting ------------------------------------------------------------------------
async function predict(query) {
  let support;
  try {
    support = supportSet();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const button = $("#predict");
  button.disabled = true;
  setStatus("Adapting to your examples...");
  const started = performance.now();
  try {
    const body = { model: $("#model").value, support, query: [query] };
    const answer = await call("POST", "/v1/predict", body);
    const roundTrip = performance.now() - started;
    showPrediction(answer, roundTrip);
    setStatus(`Adapted to ${support.length} examples.`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
}

function showPrediction(answer, roundTrip) {
  const prediction = answer.predictions[0];
  $("#prediction").textContent = prediction.label;
  const ranked = Object.entries(prediction.scores).sort((a, b) => b[1] - a[1]);
  const list = $("#ranking");
  list.replaceChildren();
  for (const [label, score] of ranked) {
    const item = document.createElement("li");
    item.className = "score";
    item.dataset.label = label;
    item.textContent = `${label}: ${(100 * score).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * score)}%`;
    item.append(bar);
    list.append(item);
  }
  const a = answer.adaptation || {};
  $("#timing").textContent =
    `adaptation: ${a.steps} steps of ${a.lr} in ${Number(a.ms).toFixed(0)} ms on the server ` +
    `(${roundTrip.toFixed(0)} ms round trip); support loss ` +
    `${Number(a.support_loss[0]).toPrecision(2)} -> ${Number(a.support_loss[1]).toPrecision(2)}`;
}

// ---- wiring ----------------------------------------------------------------------------
function start() {
  setUpCanvas();
  const keyField = $("#api-key");
  keyField.value = sessionStorage.getItem(KEY_STORE) || "";
  keyField.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, keyField.value.trim());
    loadModels();
  });
  $("#model").addEventListener("change", showModel);
  $("#settings").addEventListener("submit", (event) => event.preventDefault());
  $("#clear").addEventListener("click", clearCanvas);
  $("#add-label").addEventListener("click", () => addLabel());
  $("#predict").addEventListener("click", () => {
    if (!drawn) {
      setStatus("Draw a query first (or upload one).", true);
      return;
    }
    predict(canvas.toDataURL("image/png"));
  });
  $("#query-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) predict(await readFile(file));
  });
  addLabel();
  addLabel();
  loadModels();
}

start();
