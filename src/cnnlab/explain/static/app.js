// cnnlab explain: the page. Plain JavaScript, no libraries, no build step; every number comes from
// the server's JSON API, which runs the trained network with cnnlab's own code.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const signed = (v, digits = 4) => (v < 0 ? `(${fmt(v, digits)})` : fmt(v, digits));

const state = { run: null, source: { test: 0 }, forward: null, maxChannels: 16, unit: null, polling: null };

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const answer = await response.json();
  if (!response.ok) {
    showError(answer.error || `request failed (${response.status})`);
    throw new Error(answer.error);
  }
  showError("");
  return answer;
}

// ---------------------------------------------------------------- drawing

// Positive values orange, negative blue, zero white: the scale is each layer's largest |value|.
function colour(v, scale) {
  if (v === null) return [247, 247, 245];     // no value (the end of a vector's last row)
  const t = Math.max(-1, Math.min(1, scale > 0 ? v / scale : 0));
  if (t >= 0) return [255 - 35 * t, 255 - 170 * t, 255 - 255 * t];
  return [255 + 225 * t, 255 + 135 * t, 255 + 45 * t];
}

// One pixel per value, scaled up by CSS (crisp); ``cell`` > 0 draws each value as a cell x cell square
// instead, so that lines drawn on top stay sharp.
function drawGrid(canvas, rows, { scale = null, gray = false, zoom = 4, cell = 0 } = {}) {
  const h = rows.length, w = rows[0].length;
  const f = cell || 1;
  canvas.width = w * f;
  canvas.height = h * f;
  canvas.style.width = `${w * (cell || zoom)}px`;
  canvas.style.height = `${h * (cell || zoom)}px`;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w * f, h * f);
  let m = scale;
  if (m === null) m = Math.max(1e-12, ...rows.flat().map((v) => Math.abs(v ?? 0)));
  rows.forEach((row, i) => row.forEach((v, j) => {
    const c = gray ? [v * 255 / m, v * 255 / m, v * 255 / m] : colour(v, m);
    for (let a = 0; a < f; a++) for (let b = 0; b < f; b++) img.data.set([c[0], c[1], c[2], 255], 4 * ((i * f + a) * w * f + j * f + b));
  }));
  ctx.putImageData(img, 0, 0);
}

function cellAt(canvas, event, rows = canvas.height, cols = canvas.width) {
  const rect = canvas.getBoundingClientRect();
  const j = Math.floor(((event.clientX - rect.left) / rect.width) * cols);
  const i = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
  return [Math.min(rows - 1, Math.max(0, i)), Math.min(cols - 1, Math.max(0, j))];
}

// A 1-D layer is drawn as a near-square grid of cells, read row by row.
function vectorRows(values) {
  const cols = values.length <= 10 ? values.length : Math.ceil(Math.sqrt(values.length));
  const rows = [];
  for (let k = 0; k < values.length; k += cols) {
    const row = values.slice(k, k + cols);
    while (row.length < cols) row.push(null);
    rows.push(row);
  }
  return { rows, cols };
}

// ---------------------------------------------------------------- the network

async function loadInput(source) {
  state.source = source;
  state.forward = await api("/api/forward", { input: source, max_channels: state.maxChannels });
  renderNetwork();
  if ($("#tab-playground").classList.contains("active")) runPlayground();
}

function renderNetwork() {
  const f = state.forward;
  const run = state.run;
  drawGrid($("#input-image"), f.image, { scale: 255, gray: true, zoom: 4 });
  const where = "test" in state.source ? `test image ${state.source.test}`
    : `your image${state.inverted ? " (inverted: its background was light)" : ""}`;
  const truth = f.label === null ? "" : `, true class: ${run.classes[f.label]}`;
  $("#input-label").textContent = `${where}${truth}`;
  const box = $("#layers");
  box.replaceChildren();
  f.layers.forEach((layer) => {
    const scale = Math.max(Math.abs(layer.min), Math.abs(layer.max), 1e-12);
    const column = el("div", { class: `layer ${layer.kind}` },
      el("h3", { text: `${layer.index}. ${layer.name}` }),
      el("div", { class: "shape", text: layer.shape.join(" × ") }));
    const maps = el("div", { class: "maps" });
    if (layer.shape.length === 3) {
      const side = layer.shape[2];
      const zoom = Math.min(40, Math.max(24, 1.3 * side)) / side;     // maps of 24 to 40 pixels
      layer.values.forEach((map, c) => {
        const canvas = el("canvas", { class: "map", title: `channel ${c}`, "data-layer": layer.index, "data-channel": c });
        drawGrid(canvas, map, { scale, zoom });
        canvas.addEventListener("click", (e) => explainUnit(layer.index, [c, ...cellAt(canvas, e)]));
        maps.append(canvas);
      });
      if (layer.values.length < layer.shape[0]) maps.append(el("span", { class: "more", text: `+${layer.shape[0] - layer.values.length}` }));
    } else {
      const { rows, cols } = vectorRows(layer.values);
      const canvas = el("canvas", { class: "map vector", title: `${layer.shape[0]} values`, "data-layer": layer.index });
      drawGrid(canvas, rows, { scale, zoom: layer.values.length <= 10 ? 14 : Math.max(2, Math.min(8, 120 / cols)) });
      canvas.addEventListener("click", (e) => {
        const [i, j] = cellAt(canvas, e);
        const k = i * cols + j;
        if (k < layer.values.length) explainUnit(layer.index, [k]);
      });
      maps.append(canvas);
    }
    column.append(maps);
    box.append(column);
  });
  const bars = $("#bars");
  bars.replaceChildren();
  f.probabilities.forEach((p, k) => {
    const bar = el("div", { class: "bar-fill" });
    bar.style.width = `${Math.round(100 * p)}%`;
    bars.append(el("div", { class: `bar${k === f.predicted ? " predicted" : ""}${k === f.label ? " truth" : ""}` },
      el("span", { class: "bar-name", text: run.classes[k] }), el("div", { class: "bar-track" }, bar),
      el("span", { class: "bar-value", text: fmt(p, 3) })));
  });
  const verdict = f.label === null ? "" : (f.label === f.predicted ? " (right)" : " (wrong)");
  $("#prediction h2").replaceChildren("Class probabilities: predicted ",
    el("strong", { id: "predicted-class", text: run.classes[f.predicted] }), verdict);
  $("#channel-count").textContent = String(state.maxChannels);
}

function setupInputs() {
  const select = $("#class-select");
  state.run.classes.forEach((name, k) => select.append(el("option", { value: k, text: name })));
  $("#test-index").max = state.run.test_images - 1;
  $("#show-test").addEventListener("click", () => loadInput({ test: Number($("#test-index").value) }));
  $("#test-index").addEventListener("change", () => loadInput({ test: Number($("#test-index").value) }));
  const next = async (query) => {
    const after = "test" in state.source ? state.source.test : -1;
    const found = await api(`/api/find?${query}&after=${after}`);
    $("#test-index").value = found.index;
    loadInput({ test: found.index });
  };
  $("#next-class").addEventListener("click", () => next(`kind=class&class=${select.value}`));
  $("#next-wrong").addEventListener("click", () => next("kind=misclassified"));
  $("#upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (file) await uploadImage(file, file.type || "image/png");
  });
  $("#more-channels").addEventListener("click", () => {
    state.maxChannels = Math.min(512, state.maxChannels * 2);
    loadInput(state.source);
  });
  setupCanvas();
}

async function uploadImage(blob, type) {
  const response = await fetch("/api/upload", { method: "POST", headers: { "Content-Type": type }, body: blob });
  const answer = await response.json();
  if (!response.ok) { showError(answer.error); return; }
  state.inverted = answer.inverted;
  await loadInput({ pixels: answer.pixels });
}

// Drawing: white strokes on black, as MNIST-like images are; the server converts it as `predict` does.
function setupCanvas() {
  const canvas = $("#draw");
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false, last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = point(e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = point(e);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 16; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke();
    last = p;
  });
  const stop = () => { if (drawing) { drawing = false; classifyDrawing(); } };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointerleave", stop);
  $("#draw-clear").addEventListener("click", clear);
  $("#draw-use").addEventListener("click", classifyDrawing);
}

function classifyDrawing() {
  $("#draw").toBlob((blob) => uploadImage(blob, "image/png"), "image/png");
}

// ---------------------------------------------------------------- one number

async function explainUnit(layer, unit) {
  const described = state.run.layers[layer];
  if (!described.explained) {
    showError(`layer ${layer} (${described.name}) is a ${described.kind} layer: its numbers are not explained; ` +
      "click a convolution, pooling or dense layer");
    return;
  }
  state.unit = { layer, unit };
  selectTab("number");
  $("#unit-layer").value = String(layer);
  $("#unit-index").value = unit.join(",");
  const info = state.run.layers[layer];
  if (info.shape.length === 3 && unit[0] >= state.forward.layers[layer].values.length) {
    state.maxChannels = Math.min(512, Math.max(state.maxChannels, unit[0] + 1));
    await loadInput(state.source);
  }
  const e = await api("/api/explain", { input: state.source, layer, unit });
  renderExplanation(e);
}

function numberTable(rows, { mark = null, padded = null, cls = "" } = {}) {
  const table = el("table", { class: `numbers ${cls}` });
  rows.forEach((row, i) => {
    const tr = el("tr");
    row.forEach((v, j) => {
      const td = el("td", { text: v === null ? "pad" : fmt(v, 3) });
      if (padded && padded(i, j)) td.className = "pad";
      if (mark && mark(v, i, j)) td.classList.add("mark");
      tr.append(td);
    });
    table.append(tr);
  });
  return table;
}

function unitMapValue(e) {
  const values = state.forward.layers[e.layer].values;
  return e.unit.length === 3 ? values[e.unit[0]][e.unit[1]][e.unit[2]] : values[e.unit[0]];
}

function stepText(step) {
  if (step.op === "batch norm") {
    return `batch norm: (${fmt(step.input)} − ${signed(step.mean)}) / √(${fmt(step.var)} + ${step.eps}) × ${signed(step.weight)} + ${signed(step.bias)} = ${fmt(step.output, 6)}`;
  }
  const formulas = { relu: "max(0, x)", sigmoid: "1 / (1 + e^−x)", tanh: "tanh(x)" };
  return `${step.op}${formulas[step.op] ? ": " + formulas[step.op] : ""} of ${fmt(step.input, 6)} = ${fmt(step.output, 6)}`;
}

function renderExplanation(e) {
  const box = $("#explanation");
  box.replaceChildren();
  const mapValue = unitMapValue(e);
  const at = e.unit.length === 3 ? `channel ${e.unit[0]}, row ${e.unit[1]}, column ${e.unit[2]}` : `unit ${e.unit[0]}`;
  box.append(el("h2", { text: `Layer ${e.layer} (${e.name}), ${at}` }));
  drawUnitMap(e);
  drawLayerInput(e, 0);
  if (e.kind === "conv") {
    const [ph, pw] = e.padding;
    const [oy, ox] = e.origin;
    const [H, W] = e.input_size;
    const isPad = (i, j) => oy + i < 0 || ox + j < 0 || oy + i >= H || ox + j >= W;
    box.append(el("p", { class: "lead", text:
      `The ${e.kernel_size.join("×")} kernel of output channel ${e.unit[0]} is laid on the input at row ${oy}, column ${ox} ` +
      `(padding ${ph}×${pw}, stride ${e.stride.join("×")}); in each of the ${e.window.length} input channels the window ` +
      `and the kernel are multiplied element by element and summed (corr2d); the channels' sums add up (corr2d_multi_in).` }));
    const grid = el("div", { class: "channels" });
    const shown = Math.min(e.window.length, 8);
    for (let c = 0; c < shown; c++) {
      const block = el("div", { class: "channel", title: "click to draw this input channel" },
        el("h4", { text: `input channel ${c}` }),
        el("div", { class: "triple" },
          el("div", {}, el("h5", { text: "window" }), numberTable(e.window[c], { padded: isPad })),
          el("div", { class: "op", text: "×" }),
          el("div", {}, el("h5", { text: "kernel" }), numberTable(e.kernel[c], { cls: "kernel" })),
          el("div", { class: "op", text: "=" }),
          el("div", {}, el("h5", { text: "products" }), numberTable(e.products[c]))),
        el("div", { class: "channel-sum", text: `sum: ${fmt(e.channel_sums[c], 6)}` }));
      block.addEventListener("click", () => drawLayerInput(e, c));
      grid.append(block);
    }
    box.append(grid);
    if (shown < e.window.length) {
      const rest = e.channel_sums.slice(shown).reduce((a, b) => a + b, 0);
      box.append(el("p", { text: `… and ${e.window.length - shown} more input channels, whose sums add up to ${fmt(rest, 6)}` }));
    }
  } else if (e.kind === "pool") {
    const flat = e.window.flat().filter((v) => v !== null);
    const best = Math.max(...flat);
    box.append(el("p", { class: "lead", text: `A ${e.kernel_size.join("×")} window (stride ${e.stride.join("×")}) of input channel ${e.channel}, ` +
      `from row ${e.origin[0]}, column ${e.origin[1]}: its ${e.mode === "max" ? "maximum" : "mean"} is the output (pool2d).` }));
    box.append(numberTable(e.window, { mark: (v) => e.mode === "max" && v === best }));
    box.append(el("p", { class: "result", text: `${e.mode === "max" ? "max" : "mean"} of the window = ` },
      el("strong", { id: "explain-sum", text: fmt(e.result, 6) })));
  } else {
    box.append(el("p", { class: "lead", text: `Each of the ${e.inputs} inputs is multiplied by its weight; the products are summed. ` +
      `The ${e.top.length} largest products (by size):` }));
    const table = el("table", { class: "numbers contributions" },
      el("tr", {}, el("th", { text: "input" }), el("th", { text: "value" }), el("th", { text: "weight" }), el("th", { text: "product" })));
    const prev = state.run.layers[e.layer - 1];
    const before = e.layer >= 2 ? state.run.layers[e.layer - 2] : null;
    e.top.forEach((t) => {
      let name = String(t.input);
      if (prev && prev.kind === "flatten" && before && before.shape.length === 3) {
        const [, h, w] = before.shape;
        name += ` (channel ${Math.floor(t.input / (h * w))}, row ${Math.floor((t.input % (h * w)) / w)}, column ${t.input % w})`;
      }
      table.append(el("tr", {}, el("td", { text: name }), el("td", { text: fmt(t.value) }), el("td", { text: fmt(t.weight) }),
        el("td", { text: fmt(t.product, 5) })));
    });
    if (e.rest_count) table.append(el("tr", {}, el("td", { text: `the other ${e.rest_count}` }), el("td"), el("td"), el("td", { text: fmt(e.rest, 5) })));
    box.append(table);
  }
  if (e.kind !== "pool") {
    const bias = e.has_bias ? `, plus the bias ${signed(e.bias, 6)} = ${fmt(e.z, 6)}` : " (no bias: the batch norm after it shifts instead)";
    box.append(el("p", { class: "result" }, "sum of all products = ", el("strong", { id: "explain-sum", text: fmt(e.sum, 6) }), bias));
  }
  const steps = el("ol", { class: "steps" });
  e.steps.forEach((s) => steps.append(el("li", { text: stepText(s) })));
  if (e.steps.length) box.append(el("p", { text: "then, value by value:" }), steps);
  const equal = Math.abs(e.value - mapValue) <= 1e-5 * Math.max(1, Math.abs(mapValue));
  box.append(el("p", { class: `final ${equal ? "ok" : "bad"}` }, "result ",
    el("strong", { id: "explain-value", text: fmt(e.value, 6) }), "; the feature map holds ",
    el("strong", { id: "explain-map-value", text: fmt(mapValue, 6) }), equal ? "  ✓ the same number" : "  ✗ they differ"));
}

function drawUnitMap(e) {
  const layer = state.forward.layers[e.layer];
  const canvas = $("#unit-map");
  const scale = Math.max(Math.abs(layer.min), Math.abs(layer.max), 1e-12);
  if (e.unit.length === 3) {
    const map = layer.values[e.unit[0]];
    const cell = Math.max(4, Math.floor(224 / map[0].length));
    drawGrid(canvas, map, { scale, cell });
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
    ctx.strokeRect(e.unit[2] * cell + 1, e.unit[1] * cell + 1, cell - 2, cell - 2);
    canvas.onclick = (ev) => explainUnit(e.layer, [e.unit[0], ...cellAt(canvas, ev, map.length, map[0].length)]);
  } else {
    const { rows, cols } = vectorRows(layer.values);
    const cell = Math.max(6, Math.min(24, Math.floor(224 / cols)));
    drawGrid(canvas, rows, { scale, cell });
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
    ctx.strokeRect((e.unit[0] % cols) * cell + 1, Math.floor(e.unit[0] / cols) * cell + 1, cell - 2, cell - 2);
    canvas.onclick = (ev) => {
      const [i, j] = cellAt(canvas, ev, rows.length, cols);
      if (i * cols + j < layer.values.length) explainUnit(e.layer, [i * cols + j]);
    };
  }
}

// The layer's input channel, its zero padding as a gray border, the unit's window in black and the
// neighbouring window positions (one stride apart) dashed.
function drawLayerInput(e, channel) {
  const canvas = $("#unit-input");
  const ctx = canvas.getContext("2d");
  const note = $("#input-note");
  let map = null;
  if (e.layer === 0) map = state.forward.input[channel];
  else {
    const prev = state.forward.layers[e.layer - 1];
    if (prev.shape.length === 3 && channel < prev.values.length) map = prev.values[channel];
  }
  if (!map || e.kind === "dense") {
    canvas.width = 1; canvas.height = 1; canvas.style.width = "0px";
    note.textContent = e.kind === "dense" ? "(a vector: see the table)" : "";
    return;
  }
  if (e.kind === "pool") channel = e.channel;
  if (e.kind === "pool" && e.layer > 0) map = state.forward.layers[e.layer - 1].values[channel] || map;
  const [ph, pw] = e.padding;
  const H = map.length, W = map[0].length;
  const zoom = Math.max(4, Math.floor(224 / (W + 2 * pw)));
  const padded = [];
  for (let i = -ph; i < H + ph; i++) {
    const row = [];
    for (let j = -pw; j < W + pw; j++) row.push(i < 0 || j < 0 || i >= H || j >= W ? null : map[i][j]);
    padded.push(row);
  }
  const scale = Math.max(1e-12, ...map.flat().map(Math.abs));
  canvas.width = (W + 2 * pw) * zoom;
  canvas.height = (H + 2 * ph) * zoom;
  canvas.style.width = `${canvas.width}px`;
  canvas.style.height = `${canvas.height}px`;
  padded.forEach((row, i) => row.forEach((v, j) => {
    const c = v === null ? [200, 200, 200] : (e.layer === 0 ? [255 * v / scale, 255 * v / scale, 255 * v / scale] : colour(v, scale));
    ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
    ctx.fillRect(j * zoom, i * zoom, zoom, zoom);
  }));
  if (ph || pw) {
    ctx.strokeStyle = "#888"; ctx.setLineDash([]); ctx.lineWidth = 1;
    ctx.strokeRect(pw * zoom + 0.5, ph * zoom + 0.5, W * zoom - 1, H * zoom - 1);
  }
  const [kh, kw] = e.kernel_size;
  const [sh, sw] = e.stride;
  const [oy, ox] = [e.origin[0] + ph, e.origin[1] + pw];
  ctx.strokeStyle = "rgba(0, 120, 0, 0.9)"; ctx.setLineDash([3, 3]); ctx.lineWidth = 1;
  for (const [dy, dx] of [[0, sw], [sh, 0], [0, -sw], [-sh, 0]]) {
    const y = oy + dy, x = ox + dx;
    if (y >= 0 && x >= 0 && y + kh <= H + 2 * ph && x + kw <= W + 2 * pw) ctx.strokeRect(x * zoom + 0.5, y * zoom + 0.5, kw * zoom - 1, kh * zoom - 1);
  }
  ctx.setLineDash([]); ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
  ctx.strokeRect(ox * zoom + 1, oy * zoom + 1, kw * zoom - 2, kh * zoom - 2);
  note.textContent = `channel ${channel}` + (ph || pw ? `, zero padding ${ph}×${pw} in gray` : "") +
    `; red: this window, dashed: one stride (${sh}×${sw}) away`;
}

function setupUnitChooser() {
  const select = $("#unit-layer");
  state.run.layers.filter((l) => l.explained).forEach((l) =>
    select.append(el("option", { value: l.index, text: `${l.index}. ${l.name} (${l.shape.join("×")})` })));
  $("#unit-show").addEventListener("click", () => {
    const unit = $("#unit-index").value.split(",").map((v) => Number(v.trim()));
    explainUnit(Number(select.value), unit);
  });
}

// ---------------------------------------------------------------- playground

const BOOK_X = Array.from({ length: 6 }, () => [1, 1, 0, 0, 0, 0, 1, 1]);
const PRESETS = {
  book: [[1, -1]],
  vertical: [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
  horizontal: [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
  blur: [[1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9]],
  sharpen: [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
  identity: [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
};

function setKernel(kernel) {
  $("#k-rows").value = kernel.length;
  $("#k-cols").value = kernel[0].length;
  buildKernelGrid(kernel);
  runPlayground();
}

function buildKernelGrid(kernel) {
  const grid = $("#kernel-grid");
  grid.replaceChildren();
  kernel.forEach((row, i) => {
    const line = el("div", { class: "krow" });
    row.forEach((v, j) => {
      const input = el("input", { type: "number", step: "0.1", value: String(Math.round(v * 1000) / 1000), "data-i": i, "data-j": j });
      input.addEventListener("input", runPlayground);
      line.append(input);
    });
    grid.append(line);
  });
}

function readKernel() {
  const rows = Number($("#k-rows").value), cols = Number($("#k-cols").value);
  const kernel = Array.from({ length: rows }, () => Array(cols).fill(0));
  document.querySelectorAll("#kernel-grid input").forEach((input) => {
    const v = Number(input.value);
    kernel[Number(input.dataset.i)][Number(input.dataset.j)] = Number.isFinite(v) ? v : 0;
  });
  return kernel;
}

let playgroundTicket = 0;
async function runPlayground() {
  const ticket = ++playgroundTicket;
  const book = document.querySelector("input[name=pg-source]:checked").value === "book";
  const input = book ? { pixels: BOOK_X } : state.source;
  const padding = Number($("#pg-padding").value), stride = Number($("#pg-stride").value);
  const kernel = readKernel();
  let answer;
  try { answer = await api("/api/playground", { input, kernel, padding, stride }); } catch (err) { return; }
  if (ticket !== playgroundTicket) return;
  const image = book ? BOOK_X : state.forward.input[0];
  drawGrid($("#pg-input"), image, { scale: 1, gray: true, zoom: book ? 28 : 6 });
  drawGrid($("#pg-output"), answer.output, { zoom: Math.max(1, Math.floor(168 / answer.shape[1])) });
  $("#pg-shape").textContent = answer.shape.join(" × ");
  const lines = answer.formula.map((f, d) =>
    `${d === 0 ? "rows" : "columns"}: ⌊(n − k + p + s) / s⌋ = ⌊(${f.n} − ${f.k} + ${f.p} + ${f.s}) / ${f.s}⌋ = ${f.out}`);
  $("#formula").replaceChildren(el("div", { id: "pg-formula" }, ...lines.map((l) => el("div", { text: l }))),
    el("div", { class: "hint", text: "n: input size, k: kernel size, p: padding of both sides together, s: stride (d2l 6.3)" }));
  const numbers = $("#pg-numbers");
  numbers.replaceChildren();
  if (answer.shape[0] <= 12 && answer.shape[1] <= 16) numbers.append(el("h3", { text: "Output values" }), numberTable(answer.output));
}

function setupPlayground() {
  for (const id of ["#k-rows", "#k-cols"]) {
    for (let k = 1; k <= 5; k++) $(id).append(el("option", { value: k, text: k }));
  }
  const resize = () => {
    const old = readKernel();
    const rows = Number($("#k-rows").value), cols = Number($("#k-cols").value);
    buildKernelGrid(Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => (old[i] && old[i][j]) || 0)));
    runPlayground();
  };
  $("#k-rows").addEventListener("change", resize);
  $("#k-cols").addEventListener("change", resize);
  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => setKernel(PRESETS[b.dataset.preset])));
  document.querySelectorAll("input[name=pg-source], #pg-padding, #pg-stride").forEach((i) => i.addEventListener("input", runPlayground));
  $("#k-rows").value = 1; $("#k-cols").value = 2;
  buildKernelGrid(PRESETS.book);
}

// ---------------------------------------------------------------- training

function heldOut(t) {
  return t.points.some((p) => p.val_acc !== null && p.val_acc !== undefined) ? "val_acc" : "test_acc";
}

function drawCurves(t) {
  const canvas = $("#curves");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 50, R = 130, T = 15, B = 35;
  ctx.clearRect(0, 0, W, H);
  // A run with a validation split scores it every epoch and the test split once, at the end.
  const series = [["train_loss", "train loss", "#1f77b4"], ["train_acc", "train acc", "#d62728"],
    ["val_acc", "val acc", "#ff7f0e"], ["test_acc", "test acc", "#2ca02c"]]
    .filter(([key]) => key !== "val_acc" || heldOut(t) === "val_acc");
  const last = t.points.length ? t.points[t.points.length - 1].epoch : 1;
  const xmax = Math.max(1, t.epochs_planned || 0, last);
  let ymax = 1;
  t.points.forEach((p) => { if (p.train_loss !== null) ymax = Math.max(ymax, p.train_loss); });
  const x = (e) => L + (e / xmax) * (W - L - R), y = (v) => T + (1 - v / ymax) * (H - T - B);
  ctx.strokeStyle = "#999"; ctx.lineWidth = 1; ctx.font = "12px sans-serif"; ctx.fillStyle = "#333";
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  for (let k = 0; k <= 4; k++) {
    const v = (ymax * k) / 4;
    ctx.fillText(v.toFixed(2), 8, y(v) + 4);
  }
  const step = Math.max(1, Math.ceil(xmax / 10));
  for (let e = 0; e <= xmax; e += step) ctx.fillText(String(e), x(e) - 3, H - B + 16);
  ctx.fillText("epoch", (W - R) / 2, H - 4);
  series.forEach(([key, name, colourName], s) => {
    const pts = t.points.filter((p) => p[key] !== null);
    ctx.strokeStyle = colourName; ctx.fillStyle = colourName; ctx.lineWidth = 2;
    ctx.setLineDash(key === "test_acc" || key === "val_acc" ? [6, 4] : []);
    ctx.beginPath();
    pts.forEach((p, k) => (k ? ctx.lineTo(x(p.epoch), y(p[key])) : ctx.moveTo(x(p.epoch), y(p[key]))));
    ctx.stroke();
    pts.forEach((p) => { ctx.beginPath(); ctx.arc(x(p.epoch), y(p[key]), 2.5, 0, 7); ctx.fill(); });
    ctx.setLineDash([]);
    ctx.fillRect(W - R + 15, T + 10 + 20 * s, 14, 3);
    ctx.fillText(name, W - R + 35, T + 15 + 20 * s);
  });
}

async function loadTraining() {
  const t = await api("/api/training");
  drawCurves(t);
  const planned = t.epochs_planned ? ` of ${t.epochs_planned}` : "";
  const key = heldOut(t);
  const last = t.points.filter((p) => p[key] !== null).pop();
  const acc = last ? `, ${key === "val_acc" ? "validation" : "test"} accuracy ${fmt(last[key], 3)}` : "";
  const age = t.seconds_since_update === null ? "" : `, updated ${Math.round(t.seconds_since_update)} s ago`;
  $("#training-status").textContent = t.finished
    ? `finished: ${t.epochs_done} epoch${t.epochs_done === 1 ? "" : "s"}${acc}`
    : `not finished: epoch ${t.epochs_done}${planned} done${acc}${age} (refreshed every 3 s)`;
  clearTimeout(state.polling);
  if (!t.finished) state.polling = setTimeout(() => { if ($("#tab-training").classList.contains("active")) { loadTraining(); loadEvaluation(); } }, 3000);
}

async function loadEvaluation() {
  const ev = await api("/api/evaluation");
  const classes = ev.classes;
  const per = $("#per-class");
  per.replaceChildren();
  ev.per_class.forEach((a, k) => {
    const bar = el("div", { class: "bar-fill" });
    bar.style.width = `${Math.round(100 * a)}%`;
    per.append(el("div", { class: "bar" }, el("span", { class: "bar-name", text: classes[k] }), el("div", { class: "bar-track" }, bar),
      el("span", { class: "bar-value", text: fmt(a, 3) })));
  });
  per.append(el("div", { class: "overall", text: `all classes: ${fmt(ev.accuracy, 3)}` }));
  const table = $("#confusion");
  table.replaceChildren();
  const head = el("tr", {}, el("th"));
  classes.forEach((c) => head.append(el("th", { class: "rot", title: c, text: c.slice(0, 7) })));
  table.append(head);
  ev.confusion.forEach((row, t) => {
    const total = Math.max(1, row.reduce((a, b) => a + b, 0));
    const tr = el("tr", {}, el("th", { text: classes[t] }));
    row.forEach((n, p) => {
      const share = n / total;
      const td = el("td", { text: String(n), title: `true ${classes[t]}, predicted ${classes[p]}: ${n}`, "data-true": t, "data-predicted": p });
      const c = t === p ? [40, 140, 60] : [200, 60, 20];
      td.style.background = n ? `rgba(${c[0]},${c[1]},${c[2]},${Math.min(1, 0.1 + share)})` : "#fff";
      if (share > 0.5) td.style.color = "#fff";
      td.addEventListener("click", () => showCell(t, p));
      tr.append(td);
    });
    table.append(tr);
  });
}

async function showCell(t, p) {
  const cell = await api(`/api/cell?true=${t}&predicted=${p}`);
  const box = $("#cell-images");
  const classes = state.run.classes;
  box.replaceChildren(el("h3", { text: `true ${classes[t]}, predicted ${classes[p]}: ${cell.count} test images` +
    (cell.count > cell.indices.length ? ` (the first ${cell.indices.length})` : "") + "; click one to look inside" }));
  const grid = el("div", { class: "thumbs" });
  cell.indices.forEach((index, k) => {
    const canvas = el("canvas");
    drawGrid(canvas, cell.images[k], { scale: 255, gray: true, zoom: 2 });
    const item = el("figure", { title: `test image ${index}` }, canvas, el("figcaption", { text: String(index) }));
    item.addEventListener("click", () => { $("#test-index").value = index; selectTab("network"); loadInput({ test: index }); });
    grid.append(item);
  });
  box.append(grid);
}

// ---------------------------------------------------------------- tabs and start

function selectTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === `tab-${name}`));
  if (name === "playground") runPlayground();
  if (name === "training") { loadTraining(); loadEvaluation(); }
}

async function start() {
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  state.run = await api("/api/run");
  const r = state.run;
  const progress = r.complete ? `${r.epochs_done} epoch${r.epochs_done === 1 ? "" : "s"}` : `training: epoch ${r.epochs_done}${r.epochs_planned ? " of " + r.epochs_planned : ""}`;
  $("#run-info").textContent = `${r.model} on ${r.dataset}, ${progress} · ${r.run}`;
  setupInputs();
  setupUnitChooser();
  setupPlayground();
  await loadInput({ test: 0 });
  document.body.dataset.ready = "true";
}

start().catch((err) => showError(String(err.message || err)));
