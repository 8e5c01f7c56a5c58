// The explore page: plain JavaScript, no build step. The server holds no state for the page: every request
// carries the recipes it is about, and every face shown comes back with its recipe.
"use strict";

const $ = (id) => document.getElementById(id);
// What tests and people poking at the console can read: the page's state and a count of finished renders.
const explore = { info: null, picked: null, moves: [], a: null, b: null, variations: [], interpolation: [],
                  renders: 0, rendered: null, saved: [], picks: 0 };
window.explore = explore;

function showMessage(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "ok";
  box.hidden = false;
}

function showError(error) {
  showMessage("error: " + error.message + (error.hint ? "\nhint: " + error.hint : ""), true);
}

class RequestError extends Error {
  constructor(message, hint) { super(message); this.hint = hint; }
}

async function call(path, body, raw) {
  const options = raw === undefined
    ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }
    : { method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: raw };
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new RequestError("the server does not answer", "is `animevae explore` still running?");
  }
  if (!response.ok) {
    let answer = { error: "the server answered " + response.status, hint: "" };
    try { answer = await response.json(); } catch (error) { /* keep the status line */ }
    throw new RequestError(answer.error, answer.hint);
  }
  return path === "/api/render" ? response.blob() : response.json();
}

// ------------------------------------------------------------------ the picked face and its sliders

function currentRecipe() {
  const recipe = JSON.parse(JSON.stringify(explore.picked.recipe));
  recipe.moves = explore.moves.map((amount, direction) => ({ direction, amount }))
                              .filter((move) => move.amount !== 0);
  return recipe;
}

let rendering = false;
let renderAgain = false;

// At most one render in flight; moves made meanwhile coalesce into one more, so the face follows the slider.
async function renderPicked() {
  if (rendering) { renderAgain = true; return; }
  rendering = true;
  try {
    do {
      renderAgain = false;
      const recipe = currentRecipe();
      const picks = explore.picks;
      const blob = await call("/api/render", { recipe });
      if (picks !== explore.picks) continue;  // a face was picked (or reset) meanwhile: this render is stale
      const old = $("face").src;
      $("face").src = URL.createObjectURL(blob);
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      explore.rendered = recipe;
      explore.renders += 1;
    } while (renderAgain);
  } catch (error) {
    showError(error);
  } finally {
    rendering = false;
  }
}

function buildSliders() {
  const box = $("sliders");
  box.textContent = "";
  explore.info.shares.forEach((share, direction) => {
    const label = document.createElement("label");
    label.className = "slider";
    const name = document.createElement("span");
    name.textContent = `direction ${direction + 1} (${(share * 100).toFixed(0)}%)`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -3, max: 3, step: 0.1, value: 0, id: `slider-${direction}` });
    const value = document.createElement("output");
    value.textContent = "0.0";
    input.addEventListener("input", () => {
      explore.moves[direction] = Number(input.value);
      value.textContent = Number(input.value).toFixed(1);
      renderPicked();
    });
    label.append(name, input, value);
    box.append(label);
  });
}

function pick(face) {
  explore.picked = face;
  explore.picks += 1;
  explore.moves = explore.info.shares.map(() => 0);
  document.querySelectorAll(".faces img.picked").forEach((img) => img.classList.remove("picked"));
  if (face.element) face.element.classList.add("picked");
  for (const input of document.querySelectorAll("#sliders input")) {
    input.value = 0;
    input.nextElementSibling.textContent = "0.0";
  }
  $("face").src = face.image;
  $("face-origin").textContent = describe(face.recipe);
  $("nothing").hidden = true;
  $("picked").hidden = false;
  $("vary").disabled = !explore.info.encoder;
  explore.rendered = currentRecipe();
}

function describe(recipe) {
  const start = recipe.start;
  if (start.latent) return `from ${recipe.origin}`;
  const cls = start.class ? `, class ${start.class}` : "";
  return `seed ${start.seed}, image ${start.index}, temperature ${start.temperature}${cls}` +
         ` (animevae generate --seed ${start.seed})`;
}

// ------------------------------------------------------------------ strips

function showFaces(boxId, faces) {
  const box = $(boxId);
  box.textContent = "";
  for (const face of faces) {
    const img = document.createElement("img");
    img.src = face.image;
    img.alt = describe(face.recipe);
    img.title = img.alt;
    img.tabIndex = 0;  // reachable with Tab; Enter or Space picks it
    img.addEventListener("click", () => pick(face));
    img.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); pick(face); }
    });
    face.element = img;
    box.append(img);
  }
  return faces;
}

async function redraw() {
  const body = { seed: Number($("seed").value), temperature: Number($("temperature").value), count: 16 };
  if (explore.info.classes.length) body.class = $("class").value;
  try {
    const answer = await call("/api/grid", body);
    explore.grid = showFaces("grid", answer.faces);
  } catch (error) {
    showError(error);
  }
}

async function vary() {
  try {
    const answer = await call("/api/variations", { recipe: currentRecipe(), strength: Number($("strength").value),
                                                   seed: Number($("variation-seed").value), count: 8 });
    explore.variations = showFaces("variations", answer.faces);
    $("save-variations").disabled = false;
  } catch (error) {
    showError(error);
  }
}

function setSlot(slot) {
  explore[slot] = currentRecipe();
  $("slot-" + slot).src = $("face").src;
  $("interpolate").disabled = !(explore.a && explore.b);
}

async function interpolate() {
  try {
    const answer = await call("/api/interpolate", { a: explore.a, b: explore.b, steps: Number($("steps").value) });
    explore.interpolation = showFaces("interpolation", answer.faces);
    $("save-interpolation").disabled = false;
  } catch (error) {
    showError(error);
  }
}

async function upload(file) {
  if (!file) return;
  showMessage(`encoding ${file.name} ...`, false);
  try {
    const face = await call("/api/upload", null, file);
    pick(face);
    showMessage(`${file.name} encoded: steer it with the sliders`, false);
  } catch (error) {
    showError(error);
  }
}

// ------------------------------------------------------------------ saving

function nextName() {
  const name = $("save-name").value;
  const match = name.match(/^(.*?)(\d+)$/);
  $("save-name").value = match ? match[1] + String(Number(match[2]) + 1).padStart(match[2].length, "0")
                               : name + "-2";
}

async function save(path, body) {
  try {
    const answer = await call(path, { ...body, name: $("save-name").value });
    explore.saved = answer.saved;
    showMessage(`saved ${answer.saved.join(", ")} in ${answer.folder}`, false);
    nextName();
  } catch (error) {
    showError(error);
  }
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    const response = await fetch("/api/info");
    explore.info = await response.json();
  } catch (error) {
    showError(new RequestError("the server does not answer", "is `animevae explore` still running?"));
    return;
  }
  const info = explore.info;
  $("model").textContent = `${info.model}: ${info.image_size}x${info.image_size}, ${info.latent_dim} latent dimensions`;
  $("out").textContent = info.out;
  if (info.classes.length) {
    for (const name of info.classes) $("class").append(new Option(name, name));
    $("class-label").hidden = false;
  }
  if (!info.encoder) $("drop").hidden = true;
  buildSliders();
  $("grid-form").addEventListener("submit", (event) => { event.preventDefault(); redraw(); });
  $("class").addEventListener("change", redraw);
  $("new-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e6); redraw(); });
  $("reset").addEventListener("click", () => { pick(explore.picked); });
  $("set-a").addEventListener("click", () => setSlot("a"));
  $("set-b").addEventListener("click", () => setSlot("b"));
  $("vary").addEventListener("click", vary);
  $("interpolate").addEventListener("click", interpolate);
  $("save").addEventListener("click", () => save("/api/save", { recipe: currentRecipe() }));
  $("save-variations").addEventListener("click",
    () => save("/api/save-strip", { recipes: explore.variations.map((face) => face.recipe) }));
  $("save-interpolation").addEventListener("click",
    () => save("/api/save-strip", { recipes: explore.interpolation.map((face) => face.recipe) }));
  $("upload").addEventListener("change", (event) => upload(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
  await redraw();
  document.body.dataset.ready = "1";
}

start();
