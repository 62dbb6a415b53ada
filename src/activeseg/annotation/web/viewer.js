// The activeseg annotation viewer: the queue, one case in NiiVue (the image, or another channel of a multi-channel
// one, the uncertainty overlay, the region to label for slice and patch queries, the prediction as an editable
// drawing), accept or correct, save (PUT of the drawing as a gzipped NIfTI with the image's header; the server keeps
// only the region), round progress and the learning curve.
// Everything comes from this server; every /api request, read or write, carries the token in its Authorization
// header (the token comes from the address's #token= fragment, which is then removed, or from the token field).
"use strict";

const state = { token: null, ready: false, caseId: null, sha: null, loaded: null, saved: null, sent: null, error: null, rounds: -1, region: false, channel: "image" };
window.viewerState = state; // read by the browser test

const $ = (id) => document.getElementById(id);
const api = (path) => `/api/${path}`;
const caseUrl = (caseId, volume) => api(`cases/${encodeURIComponent(caseId)}/${volume}.nii.gz`);
let nv = null;
let labelValues = {};
let queueItems = {};
let drawing = false;
const REGION_OPACITY = 0.3;

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
  if (isError) state.error = text;
}

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("activeseg-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar and history
  }
  state.token = sessionStorage.getItem("activeseg-token");
  $("token").value = state.token || "";
  $("token").addEventListener("change", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("activeseg-token", state.token);
  });
}

function auth() {
  if (!state.token) throw new Error("enter the token of `activeseg serve` first");
  return { Authorization: `Bearer ${state.token}` };
}

async function getJson(path) {
  const response = await fetch(api(path), { cache: "no-store", headers: auth() });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

async function write(method, path, body, headers = {}) {
  const response = await fetch(api(path), { method, body, headers: { ...auth(), ...headers } });
  const text = await response.text();
  let data = {};
  try { data = JSON.parse(text); } catch { data = { detail: text }; }
  if (!response.ok) throw new Error(`${response.status}: ${data.detail || text}`);
  return data;
}

// --- queue, status and curve ---------------------------------------------------------------------------------------

async function refreshQueue() {
  const queue = await getJson("queue");
  labelValues = queue.label_values;
  const channel = $("channel");
  if (!channel.options.length && queue.channels) {
    for (const { volume, name } of queue.channels) channel.append(new Option(name, volume));
    $("channel-choice").hidden = queue.channels.length < 2;
  }
  queueItems = Object.fromEntries(queue.cases.map((item) => [item.case_id, item]));
  $("queue-round").textContent = queue.round === null ? "(no round waiting)" : `· round ${queue.round}`;
  const list = $("queue");
  list.replaceChildren();
  for (const item of queue.cases) {
    const li = document.createElement("li");
    li.dataset.case = item.case_id;
    li.dataset.sha = item.sha256 || "";
    li.className = (item.sha256 ? "labelled " : "") + (item.case_id === state.caseId ? "open" : "");
    const score = item.score === null ? "" : ` score ${Number(item.score).toPrecision(4)}`;
    const kind = item.units.length > 1 ? { slice: "slices", patch: "patches" }[queue.unit] : queue.unit;
    const units = isPartial(item) ? ` · ${item.units.length} ${kind}` : "";
    li.innerHTML = `<span class="id"></span> <span class="score">${score}${units}</span>`;
    li.querySelector(".id").textContent = item.case_id;
    li.addEventListener("click", () => openCase(item.case_id).catch((e) => say(e.message, true)));
    list.append(li);
    if (item.case_id === state.caseId) state.sha = item.sha256;
  }
  const pen = $("pen");
  if (!pen.options.length) {
    for (const [value, name] of Object.entries(labelValues)) {
      pen.append(new Option(value === "0" ? `${value} erase` : `${value} ${name}`, value));
    }
    pen.value = Object.keys(labelValues).find((v) => v !== "0") || "1";
  }
  return queue;
}

async function refreshStatus() {
  const status = await getJson("status");
  const waiting = status.waiting_round === null ? "" : ` · round ${status.waiting_round}: ${status.received} of ${status.requested} labels in`;
  const dice = status.last_dice === null ? "" : ` · last Dice ${status.last_dice.toFixed(4)}`;
  const stop = status.stop_reason ? ` · stopped: ${status.stop_reason}` : "";
  $("run-status").textContent = `${status.run} (${status.strategy}, advance: ${status.advance}) · ${status.state}${waiting}${dice}${stop}`;
  const job = status.job;
  const packages = status.packages; // the waiting round's packages, computed from the server's start
  if (packages && packages.done < packages.total && !(job && job.state === "running")) {
    showProgress(packages, `preparing ${packages.stage}: ${packages.done}/${packages.total}`);
  } else if (job) {
    const p = job.progress;
    showProgress(p, `job ${job.job} ${job.state}: ${p.stage || ""} ${p.total ? `${p.done}/${p.total}` : ""} ${job.result || job.error || ""}`);
  }
  $("next-round").disabled = status.state !== "waiting";
  if (status.evaluated_rounds !== state.rounds) {
    state.rounds = status.evaluated_rounds;
    await refreshCurve();
    await refreshQueue();
  }
  return status;
}

function showProgress(progress, text) {
  $("job-progress").max = progress.total || 1;
  $("job-progress").value = progress.done;
  $("job-text").textContent = text;
}

async function refreshCurve() {
  const rows = await getJson("curve");
  const body = $("curve-table").querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${row.round}</td><td>${row.n_labelled}</td><td>${Number(row.mean_dice).toFixed(4)}</td>`;
    body.append(tr);
  }
  if (rows.length) {
    const response = await fetch(api("curve.png"), { cache: "no-store", headers: auth() });
    if (!response.ok) throw new Error(`curve.png: ${response.status}`);
    const old = $("curve").src;
    $("curve").src = URL.createObjectURL(await response.blob());
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  }
}

// --- one case ---------------------------------------------------------------------------------------------------------

function isPartial(item) {
  return Boolean(item) && item.units.some((unit) => unit.includes("@"));
}

async function openCase(caseId, keepDrawing = false) {
  say(`opening ${caseId}…`);
  const drawn = keepDrawing && nv.drawBitmap ? nv.drawBitmap.slice() : null; // every channel shares one grid
  state.loaded = null;
  state.caseId = caseId;
  state.channel = $("channel").value || "image";
  const partial = isPartial(queueItems[caseId]);
  const headers = auth();
  const volumes = [
    { url: caseUrl(caseId, state.channel), headers },
    { url: caseUrl(caseId, "uncertainty"), headers, colormap: "warm", opacity: Number($("opacity").value) },
  ];
  if (partial) volumes.push({ url: caseUrl(caseId, "region"), headers, colormap: "violet", opacity: REGION_OPACITY });
  await nv.loadVolumes(volumes);
  state.region = partial;
  if (partial) showRegion(nv.volumes[2]);
  nv.setOpacity(1, $("show-uncertainty").checked ? Number($("opacity").value) : 0);
  if (drawn) restoreDrawing(drawn);
  else await loadPrediction();
  const item = document.querySelector(`#queue li[data-case="${CSS.escape(caseId)}"]`);
  state.sha = item && item.dataset.sha ? item.dataset.sha : null;
  document.querySelectorAll("#queue li").forEach((li) => li.classList.toggle("open", li.dataset.case === caseId));
  $("case-title").textContent = caseId + (state.sha ? " (labelled)" : "");
  for (const id of ["accept", "pen", "draw", "undo", "save"]) $(id).disabled = false;
  state.loaded = caseId;
  const where = partial ? " Only the violet region is kept: label all of it, background too." : "";
  say(`${caseId}: the prediction is the drawing layer. Accept it, or pick a label and Draw to correct it, then Save.${where}`);
}

function showRegion(region) {
  // put the crosshair on the region voxel nearest the region's centroid, so that every view shows the region
  const [, nx, ny, nz] = region.hdr.dims;
  const inside = [];
  for (let i = 0; i < nx * ny * nz; i++) {
    if (region.img[i] > 0) inside.push([i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))]);
  }
  if (!inside.length) return;
  const centre = [0, 1, 2].map((a) => inside.reduce((sum, v) => sum + v[a], 0) / inside.length);
  const distance = (v) => v.reduce((sum, x, a) => sum + (x - centre[a]) ** 2, 0);
  const voxel = inside.reduce((best, v) => (distance(v) < distance(best) ? v : best));
  nv.scene.crosshairPos = nv.vox2frac(voxel); // the region shares the image's grid
  nv.drawScene();
  state.regionVoxel = voxel;
}

async function loadPrediction() {
  // NVImage.loadFromUrl sends the token; Niivue.loadDrawingFromUrl would not
  const url = caseUrl(state.caseId, "prediction");
  const image = await niivue.NVImage.loadFromUrl({ url, headers: auth(), name: "prediction.nii.gz" });
  if (!nv.loadDrawing(image)) throw new Error(`${state.caseId}: the prediction could not be loaded as a drawing`);
  nv.setDrawOpacity(Number($("opacity").value));
}

function restoreDrawing(bitmap) {
  // the drawing of another channel of the same case, kept as drawn (undo starts from here)
  nv.createEmptyDrawing();
  nv.drawBitmap.set(bitmap);
  nv.drawAddUndoBitmap();
  nv.refreshDrawing(true);
  nv.setDrawOpacity(Number($("opacity").value));
}

async function gzip(bytes) {
  // a label is mostly runs of one value: gzip sends a clinical-size drawing (tens of MB raw) in a fraction of that
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function saveLabel() {
  const drawn = await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
  if (!(drawn instanceof Uint8Array)) throw new Error("NiiVue returned no drawing to save");
  const bytes = await gzip(drawn);
  state.sent = { bytes: bytes.length, drawn: drawn.length, gzip: bytes[0] === 0x1f && bytes[1] === 0x8b };
  const headers = { "Content-Type": "application/octet-stream" };
  if (state.sha) headers["If-Match"] = state.sha;
  const result = await write("PUT", `cases/${encodeURIComponent(state.caseId)}/label`, bytes, headers);
  state.saved = result;
  state.sha = result.sha256;
  const ignored = result.ignored_outside_region ? ` · ${result.ignored_outside_region} labelled voxels outside the region ignored` : "";
  say(`${result.case_id}: label ${result.outcome} (${result.received} of ${result.requested} in)${ignored}` +
      (result.next_round ? " · all labels in: the next round has started" : ""));
  await refreshQueue();
  await refreshStatus();
}

function setDrawing(on) {
  drawing = on;
  nv.setDrawingEnabled(on);
  if (on) nv.setPenValue(Number($("pen").value), false);
  $("draw").classList.toggle("active", on);
}

// --- wiring ---------------------------------------------------------------------------------------------------------

function guard(action) {
  return () => action().catch((e) => say(e.message, true));
}

async function main() {
  readToken();
  nv = new niivue.Niivue({
    backColor: [0.1, 0.11, 0.13, 1],
    crosshairColor: [0.35, 0.75, 1, 0.8],
    crosshairWidth: 1,
    dragAndDropEnabled: false,
  });
  await nv.attachTo("gl");
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.setInterpolation(true);
  $("opacity").addEventListener("input", () => {
    const value = Number($("opacity").value);
    nv.setDrawOpacity(value);
    if (nv.volumes.length > 1) nv.setOpacity(1, $("show-uncertainty").checked ? value : 0);
  });
  $("show-uncertainty").addEventListener("change", () => {
    if (nv.volumes.length > 1) nv.setOpacity(1, $("show-uncertainty").checked ? Number($("opacity").value) : 0);
  });
  $("accept").addEventListener("click", guard(async () => {
    setDrawing(false);
    await loadPrediction();
    await saveLabel();
  }));
  $("channel").addEventListener("change", guard(async () => {
    if (state.loaded) await openCase(state.loaded, true);
  }));
  $("draw").addEventListener("click", () => setDrawing(!drawing));
  $("pen").addEventListener("change", () => drawing && nv.setPenValue(Number($("pen").value), false));
  $("undo").addEventListener("click", () => nv.drawUndo());
  $("save").addEventListener("click", guard(saveLabel));
  $("next-round").addEventListener("click", guard(async () => {
    const partial = $("accept-partial").checked ? "?accept_partial=true" : "";
    const job = await write("POST", `next-round${partial}`);
    say(`round started in the background (job ${job.job})`);
  }));
  await refreshQueue();
  await refreshStatus();
  setInterval(() => refreshStatus().catch((e) => say(e.message, true)), 2000);
  state.ready = true;
}

main().catch((e) => say(`viewer failed to start: ${e.message}`, true));
