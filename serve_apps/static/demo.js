// The VLM-3R demo page: pick a bundled video or upload one, ask a question, watch the answer stream
// in from the OpenAI-compatible API (POST v1/chat/completions, stream: true, server-sent events).
// Every URL is relative to the page, so the page works under any Serve route prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "vlm3r-api-key";
const state = { model: "vlm3r", videos: new Map(), video: null, question: null, viewer: null };

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

// fetch with the API key; throws an Error with the server's OpenAI-format message on 4xx/5xx.
async function apiFetch(url, options = {}) {
  const response = await fetch(url, { ...options, headers: withKey(options.headers) });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message += `: ${(await response.json()).error.message}`; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function setStatus(text) { $("status").textContent = text; }

function benchmarkText(q) {
  return q.options.length ? `${q.question}\nOptions:\n${q.options.join("\n")}` : q.question;
}

async function loadVideos() {
  const select = $("video-select");
  try {
    const listing = await (await apiFetch("demo/videos")).json();
    state.model = listing.model;
    $("frames-title").textContent = `The ${listing.num_frames} frames the model sees`;
    state.videos = new Map(listing.videos.map((v) => [v.id, v]));
    select.replaceChildren(new Option(listing.videos.length ? "choose a demo video" : "no demo videos on this server", ""));
    for (const v of listing.videos) {
      select.add(new Option(`${v.id}${v.questions.length ? ` (${v.questions.length} questions)` : ""}`, v.id));
    }
  } catch (e) {
    select.replaceChildren(new Option(`demo videos unavailable (${e.message})`, ""));
  }
}

async function useVideo(blob, name, entry) {
  state.video = { blob, name, entry };
  $("player").src = URL.createObjectURL(blob);
  $("ask").disabled = false;
  const questions = $("question-select");
  questions.replaceChildren(new Option(entry && entry.questions.length
    ? "pick a generated benchmark question (or type your own)" : "no benchmark questions for this video", ""));
  for (const q of entry ? entry.questions : []) {
    questions.add(new Option(`[${q.question_type}] ${q.question}`, q.id));
  }
  questions.disabled = !(entry && entry.questions.length);
  state.question = null;
  $("answer").textContent = "";
  $("answer").dataset.state = "idle";
  $("truth").hidden = true;
  await Promise.all([loadFrames(blob), loadReconstruction(blob, name, entry)]);
}

// The video's CUT3R reconstruction (points and camera path) from the server; a scene's annotated
// layout instead when the service runs CUT3R without point heads.
async function loadReconstruction(blob, name, entry) {
  $("viewer-source").textContent = "reconstructing the video with CUT3R…";
  const request = (query) => apiFetch(`demo/reconstruction${query}`, {
    method: "POST", body: blob, headers: { "Content-Type": blob.type || "video/mp4" },
  });
  try {
    let cloud;
    try {
      cloud = await (await request("")).json();
    } catch (e) {
      // An untrained CUT3R (the tiny preset's seeded heads) is never confident: show every point, and say so.
      if (!/no point reaches confidence/.test(e.message)) throw e;
      cloud = await (await request("?confidence=1")).json();
      cloud.source += " (every point: none reaches the confidence threshold)";
    }
    showCloud(cloud, name);
  } catch (e) {
    if (entry && entry.has_layout) await loadLayout(entry.id, `no reconstruction (${e.message}); the annotated layout instead`);
    else noLayout(e.message);
  }
}

async function loadFrames(blob) {
  const frames = $("frames");
  frames.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "sampling frames…" }));
  try {
    const response = await apiFetch("demo/frames", {
      method: "POST", body: blob, headers: { "Content-Type": blob.type || "video/mp4" },
    });
    const sampled = await response.json();
    frames.replaceChildren(...sampled.images.map((src, k) => {
      const figure = document.createElement("figure");
      const img = Object.assign(document.createElement("img"), { src, alt: `sampled frame ${k + 1}` });
      const caption = document.createElement("figcaption");
      caption.textContent = `${k + 1}: frame ${sampled.frame_indices[k]}, ${sampled.timestamps[k].toFixed(1)} s`;
      figure.append(img, caption);
      return figure;
    }));
  } catch (e) {
    frames.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: `frames unavailable (${e.message})` }));
  }
}

function showCloud(cloud, label) {
  try {
    state.viewer.load(cloud);
    $("viewer-source").textContent = `${cloud.source || label} · ${cloud.points.length} points, ${cloud.cameras.length} cameras. Drag to rotate, wheel to zoom.`;
    $("viewer").dataset.loaded = "true";
  } catch (e) {
    $("viewer-source").textContent = `cannot show ${label}: ${e.message}`;
  }
}

async function loadLayout(id, note) {
  try {
    const cloud = await (await apiFetch(`demo/videos/layout?video=${encodeURIComponent(id)}`)).json();
    showCloud({ ...cloud, source: note ? `${cloud.source} (${note})` : cloud.source }, id);
  } catch (e) {
    $("viewer-source").textContent = `no 3D layout (${e.message})`;
  }
}

function noLayout(reason) {
  $("viewer-source").textContent = `No 3D data for this video${reason ? ` (${reason})` : ""}: load a point-cloud JSON ({points, colors, cameras}).`;
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function ask() {
  const text = $("question-text").value.trim();
  if (!state.video || !text) { setStatus(state.video ? "type or pick a question" : "pick or upload a video first"); return; }
  const answer = $("answer");
  const question = state.question && benchmarkText(state.question) === text ? state.question : null;
  answer.textContent = "";
  answer.dataset.state = "streaming";
  $("truth").hidden = true;
  $("ask").disabled = true;
  const started = performance.now();
  try {
    setStatus("sending the video…");
    let url = await readAsDataUrl(state.video.blob);
    if (!url.startsWith("data:video/")) url = url.replace(/^data:[^;,]*/, "data:video/mp4");
    const response = await apiFetch("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: state.model,
        stream: true,
        messages: [{ role: "user", content: [{ type: "video_url", video_url: { url } }, { type: "text", text }] }],
      }),
    });
    setStatus("answering…");
    await readEvents(response, (event) => {
      if (event.error) throw new Error(event.error.message);
      for (const choice of event.choices || []) answer.textContent += choice.delta.content || "";
    });
    answer.dataset.state = "done";
    setStatus(`answered in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    if (question) {
      const letter = question.mc_answer || question.ground_truth;
      const option = question.options.find((o) => o.startsWith(`${letter}.`));
      $("truth").textContent = `Ground truth: ${option || question.ground_truth}`;
      $("truth").hidden = false;
    }
  } catch (e) {
    answer.dataset.state = "error";
    answer.textContent = e.message;
    setStatus("failed");
  } finally {
    $("ask").disabled = false;
  }
}

// Server-sent events from a fetch response: calls onEvent with each JSON payload until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
    if (done) return;
  }
}

function init() {
  state.viewer = new PointCloudViewer($("viewer"));
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadVideos();
  });
  $("video-select").addEventListener("change", async (e) => {
    const entry = state.videos.get(e.target.value);
    if (!entry) return;
    setStatus("loading the video…");
    try {
      const blob = await (await apiFetch(`demo/videos/file?video=${encodeURIComponent(entry.id)}`)).blob();
      await useVideo(blob, entry.id, entry);
      setStatus("");
    } catch (err) {
      setStatus(`cannot load ${entry.id}: ${err.message}`);
    }
  });
  $("video-upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) { $("video-select").value = ""; useVideo(file, file.name, null); }
  });
  $("question-select").addEventListener("change", (e) => {
    const entry = state.video && state.video.entry;
    state.question = entry ? entry.questions.find((q) => q.id === e.target.value) || null : null;
    if (state.question) $("question-text").value = benchmarkText(state.question);
  });
  $("ask").addEventListener("click", ask);
  $("cloud-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try { showCloud(JSON.parse(await file.text()), file.name); } catch (err) { $("viewer-source").textContent = `${file.name}: ${err.message}`; }
  });
  // ?cloud=<url>: show a point cloud from a URL (e.g. a reconstruction endpoint) at start.
  const cloudUrl = new URLSearchParams(location.search).get("cloud");
  if (cloudUrl) {
    const sameOrigin = new URL(cloudUrl, location.href).origin === location.origin; // the key goes nowhere else
    (sameOrigin ? apiFetch(cloudUrl) : fetch(cloudUrl)).then((r) => r.json()).then((c) => showCloud(c, cloudUrl))
      .catch((e) => { $("viewer-source").textContent = `cannot load ${cloudUrl}: ${e.message}`; });
  }
  loadVideos();
}

init();
