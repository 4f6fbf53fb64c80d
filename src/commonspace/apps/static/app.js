// The commonspace search page: a thin client of the JSON API (POST /api/search).
// The text query lives in the URL (/?q=...&modality=...&k=...); every result element carries
// data-row (its row in the index). No dependencies, no network but this server.
"use strict";

const IMAGE_EXT = /\.(png|jpe?g|gif|bmp|webp|tiff?)$/i;
const AUDIO_EXT = /\.(wav|flac|ogg|oga|mp3|m4a|aiff?)$/i;
const $ = (id) => document.getElementById(id);
let lastUpload = null; // {kind, data, name}: the uploaded query, re-run when k/modality change

function formParams() {
  const body = { k: parseInt($("k").value, 10) };
  if (Number.isNaN(body.k)) body.k = 10;
  if ($("modality").value) body.modality = $("modality").value;
  return body;
}

function setUrl(q) {
  const params = new URLSearchParams();
  if (q) params.set("q", q);
  if ($("modality").value) params.set("modality", $("modality").value);
  if ($("k").value && $("k").value !== "10") params.set("k", $("k").value);
  const url = params.toString() ? `/?${params}` : "/";
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  $("q").value = params.get("q") || "";
  $("k").value = params.get("k") || "10";
  const modality = params.get("modality") || "";
  if (modality && ![...$("modality").options].some((o) => o.value === modality)) {
    $("modality").add(new Option(modality, modality)); // the server will name the problem
  }
  $("modality").value = modality;
  return $("q").value;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function search(query, label) {
  showError("");
  $("status").textContent = `searching ${label}...`;
  const started = performance.now();
  let response, answer;
  try {
    response = await fetch("/api/search", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...query, ...formParams() }),
    });
    answer = await response.json();
  } catch (err) {
    $("status").textContent = "";
    showError(`the server did not answer: ${err}`);
    return;
  }
  if (!response.ok) {
    $("status").textContent = "";
    $("results").replaceChildren();
    showError(`${response.status}: ${answer.error || JSON.stringify(answer)}`);
    return;
  }
  const ms = Math.round(performance.now() - started);
  $("status").textContent = `${answer.hits.length} hits for ${answer.query} (${ms} ms)`;
  render(answer.hits);
}

function render(hits) {
  const cards = hits.map((hit) => {
    const card = document.createElement("article");
    card.className = `result ${hit.modality}`;
    card.dataset.row = hit.row;
    card.dataset.modality = hit.modality;
    const source = hit.source || "";
    const media = `/api/items/${hit.row}/media`;
    if (IMAGE_EXT.test(source)) {
      const img = document.createElement("img");
      img.src = media;
      img.alt = `${hit.modality} ${hit.id}`;
      img.loading = "lazy";
      card.append(img);
    } else if (AUDIO_EXT.test(source)) {
      card.classList.add("audio");
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = media;
      const play = document.createElement("button");
      play.type = "button";
      play.className = "play";
      play.textContent = "▶ play";
      play.addEventListener("click", (event) => { event.stopPropagation(); toggle(card, audio); });
      card.addEventListener("click", (event) => {
        if (event.target !== audio) toggle(card, audio);
      });
      audio.addEventListener("pause", () => { card.classList.remove("playing"); play.textContent = "▶ play"; });
      audio.addEventListener("play", () => { card.classList.add("playing"); play.textContent = "❚❚ pause"; });
      card.append(audio, play);
    } else {
      const text = document.createElement("p");
      text.className = "snippet";
      text.textContent = source || hit.id;
      card.append(text);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const tags = document.createElement("span");
    for (const [cls, value] of [["label", hit.label], ["modality", hit.modality]]) {
      if (value === null || value === undefined) continue;
      const badge = document.createElement("span");
      badge.className = `badge ${cls}`;
      badge.textContent = String(value);
      tags.append(badge, " ");
    }
    meta.append(score, tags);
    const id = document.createElement("div");
    id.className = "id";
    id.textContent = `#${hit.rank} · ${hit.id}`;
    card.append(meta, id);
    return card;
  });
  $("results").replaceChildren(...cards);
}

function toggle(card, audio) {
  if (!audio.paused) { audio.pause(); return; }
  document.querySelectorAll("#results audio").forEach((other) => { if (other !== audio) other.pause(); });
  audio.play().catch((err) => showError(`cannot play ${card.dataset.row}: ${err.message}`));
}

function fileKind(file) {
  if (file.type.startsWith("image/") || IMAGE_EXT.test(file.name)) return "image";
  if (file.type.startsWith("audio/") || AUDIO_EXT.test(file.name)) return "audio";
  return null;
}

function upload(file) {
  const kind = fileKind(file);
  if (!kind) { showError(`${file.name} is neither an image nor an audio file`); return; }
  const reader = new FileReader();
  reader.onload = () => {
    const data = String(reader.result).replace(/^data:[^,]*,/, "");
    lastUpload = { kind, data, name: file.name };
    $("q").value = "";
    $("upload-name").textContent = `${kind}: ${file.name}`;
    setUrl("");
    search({ [kind]: data }, `${kind} ${file.name}`);
  };
  reader.onerror = () => showError(`cannot read ${file.name}`);
  reader.readAsDataURL(file);
}

function runFromForm() {
  const q = $("q").value.trim();
  if (q) {
    lastUpload = null;
    $("upload-name").textContent = "";
    setUrl(q);
    search({ text: q }, `"${q}"`);
  } else if (lastUpload) {
    setUrl("");
    search({ [lastUpload.kind]: lastUpload.data }, `${lastUpload.kind} ${lastUpload.name}`);
  } else {
    showError("type a query or choose a file");
  }
}

async function start() {
  try {
    const health = await (await fetch("/api/health")).json();
    for (const [name, rows] of Object.entries(health.modalities)) {
      $("modality").add(new Option(`${name} (${rows})`, name));
    }
    const sizes = Object.entries(health.modalities).map(([m, n]) => `${m} ${n}`).join(", ");
    $("info").textContent = `${health.ntotal} items (${sizes}); queries: ${health.query_kinds.join(", ")}`;
    $("k").max = health.max_k;
  } catch (err) {
    $("info").textContent = `cannot reach the index: ${err}`;
  }
  $("search").addEventListener("submit", (event) => { event.preventDefault(); runFromForm(); });
  $("modality").addEventListener("change", () => { if ($("q").value.trim() || lastUpload) runFromForm(); });
  $("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); $("file").value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) upload(event.dataTransfer.files[0]);
  });
  window.addEventListener("popstate", () => { const q = readUrl(); if (q) search({ text: q }, `"${q}"`); });
  const q = readUrl();
  if (q) search({ text: q }, `"${q}"`);
}

start();
