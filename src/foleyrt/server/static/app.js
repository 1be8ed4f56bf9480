// foleyrt web UI: a thin client of the /v1 API (no build step, no framework).
// Progress is polled; media are fetched with the token (when the server has one) and shown
// through object URLs, since <video src> cannot send an Authorization header.
"use strict";

const TOKEN_KEY = "foleyrt.token";
const RECENT_KEY = "foleyrt.recent";
const RECENT_MAX = 12;
const POLL_MS = 500;
const FINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);
const STAGES = {
  video: "Reading the video",
  features: "Extracting video and text features",
  decode: "Decoding the audio",
  saving: "Writing the files",
};

const $ = (id) => document.getElementById(id);
const ui = {
  token: localStorage.getItem(TOKEN_KEY),
  authRequired: false,
  jobId: null,
  pollTimer: null,
  objectUrls: [],
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- API ------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (ui.token) headers.set("Authorization", `Bearer ${ui.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  const message = await errorMessage(response);
  if (response.status === 401) askForToken(message);
  throw new ApiError(response.status, message);
}

async function errorMessage(response) {
  try {
    const { detail } = await response.json();
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => `${d.loc.filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
    }
  } catch (_) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

async function objectUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  ui.objectUrls.push(url);
  return url;
}

// ---- start-up -------------------------------------------------------------------------

async function start() {
  bindForm();
  renderRecent();
  const health = await (await fetch("/v1/health")).json();
  ui.authRequired = health.auth_required;
  $("token-button").hidden = !ui.authRequired;
  if (ui.authRequired && !ui.token) {
    askForToken();
    return;
  }
  await loadModel();
  refreshRecent();
}

async function loadModel() {
  const info = await (await api("/v1/models")).json();
  const model = info.models[0];
  const badge = $("model-badge");
  badge.textContent = `${model.id} · ${model.size} · ${model.device}`;
  badge.hidden = false;
  $("random-warning").hidden = !model.random_weights;
  $("steps").placeholder = info.defaults.steps;
  $("samples").max = info.limits.max_samples;
  $("duration").min = info.limits.min_seconds;
  $("duration").max = info.limits.max_seconds;
}

function askForToken(message) {
  $("token-error").textContent = message || "";
  $("token-error").hidden = !message;
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
}

// ---- the form -------------------------------------------------------------------------

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function bindForm() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      $("video-field").hidden = mode() !== "video";
      $("duration-field").hidden = mode() !== "text";
    });
  }
  $("video").addEventListener("change", () => {
    const file = $("video").files[0];
    const preview = $("video-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
  });
  $("job-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("token-button").addEventListener("click", () => askForToken());
  $("token-form").addEventListener("submit", () => {
    ui.token = $("token-input").value.trim();
    localStorage.setItem(TOKEN_KEY, ui.token);
    loadModel().then(refreshRecent).catch(() => {});
  });
}

function formData() {
  const data = new FormData();
  if (mode() === "video") {
    const file = $("video").files[0];
    if (!file) throw new Error("Choose a video file first, or switch to text only.");
    data.append("video", file);
  } else {
    data.append("duration", $("duration").value);
  }
  data.append("prompt", $("prompt").value);
  for (const name of ["negative_prompt", "steps", "guidance", "seed", "samples", "window", "overlap"]) {
    const value = $(name).value.trim();
    if (value !== "") data.append(name, value);
  }
  return data;
}

async function submit(event) {
  event.preventDefault();
  const error = $("form-error");
  error.hidden = true;
  const button = $("generate");
  button.disabled = true;
  button.textContent = "Uploading…";
  try {
    const job = await (await api("/v1/jobs", { method: "POST", body: formData() })).json();
    remember(job);
    showJob(job.id);
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
}

async function cancel() {
  if (!ui.jobId) return;
  try {
    await api(`/v1/jobs/${ui.jobId}`, { method: "DELETE" });
    $("status-text").textContent = "Cancelling…";
  } catch (err) {
    showError(err.message);
  }
}

// ---- one job --------------------------------------------------------------------------

function showJob(id) {
  clearTimeout(ui.pollTimer);
  ui.jobId = id;
  for (const url of ui.objectUrls) URL.revokeObjectURL(url);
  ui.objectUrls = [];
  $("sample-list").replaceChildren();
  $("job-empty").hidden = true;
  $("status").hidden = false;
  $("job-error").hidden = true;
  $("status-text").textContent = "Loading…";
  markActive(id);
  poll(id);
}

async function poll(id) {
  if (id !== ui.jobId) return;
  let job;
  try {
    job = await (await api(`/v1/jobs/${id}`)).json();
  } catch (err) {
    if (err.status === 404) forget(id);
    showError(err.status === 404 ? "This job no longer exists on the server." : err.message);
    return;
  }
  if (id !== ui.jobId) return;
  renderStatus(job);
  updateRecent(job);
  if (FINAL.has(job.state)) {
    if (job.state === "succeeded") await renderSamples(job);
  } else {
    ui.pollTimer = setTimeout(() => poll(id), POLL_MS);
  }
}

function describe(job) {
  const p = job.progress;
  switch (job.state) {
    case "queued":
      return job.queue_position === 1 ? "Waiting in queue: next to run" : `Waiting in queue: position ${job.queue_position}`;
    case "running":
      if (p.stage === "denoise") return `Denoising: step ${p.step} of ${p.total}`;
      if (p.stage === "windows") return `Reading the video: window ${p.step} of ${p.total}`;
      if (p.stage === "decode" && p.total > 1) return `Decoding the audio: part ${p.step} of ${p.total}`;
      return STAGES[p.stage] || "Starting";
    case "succeeded": {
      const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
      return `Done in ${seconds.toFixed(1)} s`;
    }
    case "failed": return "Failed";
    case "cancelled": return "Cancelled";
    default: return "Expired: the results were deleted";
  }
}

// Overall fraction: most of a job is denoising; the other stages get a slice each.
function fraction(job) {
  if (job.state === "succeeded") return 1;
  const p = job.progress;
  const base = { video: 0, windows: 0, features: 0.05, denoise: 0.1, decode: 0.9, saving: 0.95 }[p.stage];
  if (base === undefined) return null;
  if (p.stage === "windows" && p.total) return 0.05 * Math.min(1, p.step / p.total);
  return p.stage === "denoise" && p.total ? 0.1 + 0.8 * (p.step / p.total) : base;
}

function renderStatus(job) {
  $("job-title").textContent = job.params.prompt ? `“${job.params.prompt}”` : "Results";
  $("status-text").textContent = describe(job);
  const bar = $("progress");
  const f = fraction(job);
  if (f === null || FINAL.has(job.state) && job.state !== "succeeded") bar.removeAttribute("value");
  else bar.value = f;
  bar.hidden = FINAL.has(job.state);
  $("cancel").hidden = FINAL.has(job.state);
  if (job.error) showError(job.error);
  const p = job.params;
  const source = p.video_name ? `video ${p.video_name}` : `text only, ${p.duration} s`;
  $("job-meta").textContent = `${source} · ${p.steps} steps · guidance ${p.guidance} · seed ${p.seed}` +
    (job.state === "succeeded" ? ` · kept until ${new Date(job.expires_at).toLocaleString()}` : "");
}

function showError(message) {
  $("job-error").textContent = message;
  $("job-error").hidden = false;
}

async function renderSamples(job) {
  const template = $("sample-template");
  const short = job.id.slice(0, 8);
  const cards = await Promise.all(job.outputs.map(async (output) => {
    // Imported, not cloned: a clone belongs to the template's inert document, where media
    // elements given a source fail to load (error 4) and stay so once moved into the page.
    const card = document.importNode(template.content.firstElementChild, true);
    const n = output.index + 1;
    card.querySelector(".sample-title").textContent = job.outputs.length > 1 ? `Sample ${n}` : "Your sound";
    const [wav, png, mp4] = await Promise.all([
      objectUrl(output.wav), objectUrl(output.spectrogram), output.mp4 ? objectUrl(output.mp4) : null,
    ]);
    card.querySelector(".sample-audio").src = wav;
    card.querySelector(".sample-spectrogram").src = png;
    const wavLink = card.querySelector(".download-wav");
    wavLink.href = wav;
    wavLink.download = `foley-${short}-${n}.wav`;
    if (mp4) {
      const video = card.querySelector(".sample-video");
      video.src = mp4;
      video.hidden = false;
      const mp4Link = card.querySelector(".download-mp4");
      mp4Link.href = mp4;
      mp4Link.download = `foley-${short}-${n}.mp4`;
      mp4Link.hidden = false;
    } else {
      card.classList.add("text-only");
    }
    return card;
  }));
  if (job.id === ui.jobId) $("sample-list").replaceChildren(...cards);
}

// ---- recent jobs (this browser's, in localStorage) ---------------------------------------

function recent() {
  try {
    return JSON.parse(localStorage.getItem(RECENT_KEY)) || [];
  } catch (_) {
    return [];
  }
}

function saveRecent(list) {
  localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
  renderRecent();
}

function remember(job) {
  const entry = {
    id: job.id, prompt: job.params.prompt, video: job.params.video_name,
    created: job.created_at, state: job.state,
  };
  saveRecent([entry, ...recent().filter((e) => e.id !== job.id)]);
}

function updateRecent(job) {
  const list = recent();
  const entry = list.find((e) => e.id === job.id);
  if (entry && entry.state !== job.state) {
    entry.state = job.state;
    saveRecent(list);
  }
}

function forget(id) {
  saveRecent(recent().filter((e) => e.id !== id));
}

async function refreshRecent() {
  await Promise.all(recent().filter((e) => !FINAL.has(e.state)).map(async (e) => {
    try {
      updateRecent(await (await api(`/v1/jobs/${e.id}`)).json());
    } catch (err) {
      if (err.status === 404) forget(e.id);
    }
  }));
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function renderRecent() {
  const list = recent();
  $("recent-empty").hidden = list.length > 0;
  $("recent").replaceChildren(...list.map((e) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = e.id;
    button.classList.toggle("active", e.id === ui.jobId);
    const text = document.createElement("span");
    text.className = "what";
    text.textContent = e.prompt || "(no description)";
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${e.video || "text only"} · ${ago(e.created)}`;
    text.append(when);
    const state = document.createElement("span");
    state.className = `state ${e.state}`;
    state.textContent = e.state;
    button.append(text, state);
    button.addEventListener("click", () => showJob(e.id));
    item.append(button);
    return item;
  }));
}

function markActive(id) {
  for (const button of $("recent").querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.id === id);
  }
}

start().catch((err) => {
  $("form-error").textContent = `Cannot reach the server: ${err.message}`;
  $("form-error").hidden = false;
});
