// The phased dashboard: read-only, it polls the supervisor's control API
// every second and draws phases, instances, policies, the queue and the
// recent requests with their timelines. No framework, no CDN.
//
// On the TCP listener the API needs the bearer token: it is taken from the
// page's fragment (/ui/#token=..., which browsers never send to a server)
// or asked for, and kept in this tab's sessionStorage only.
"use strict";

const POLL_MS = 1000;
const RECENT = 12; // requests drawn with their timelines
const api = new URL("../", location.href); // the control API's root

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("phased-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname); // out of the address bar
  }
  return sessionStorage.getItem("phased-token") || "";
}

async function get(path) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const resp = await fetch(new URL(path, api), { headers, cache: "no-store" });
  if (resp.status === 401) {
    sessionStorage.removeItem("phased-token");
    throw Object.assign(new Error("the control API wants its bearer token"), { login: true });
  }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

// el builds an element: el("td", {class: "num"}, "text", child...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") Object.assign(e.style, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
}

function pill(state) { return el("span", { class: "pill", "data-state": state }, state); }

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function ms(d) { return d < 1 ? (d * 1000).toFixed(0) + " µs" : d < 1000 ? d.toFixed(1) + " ms" : (d / 1000).toFixed(2) + " s"; }

function drawStatus(st) {
  const s = document.getElementById("state");
  s.textContent = st.state;
  s.dataset.state = st.state;
  document.getElementById("meta").textContent = `pid ${st.pid} · artifacts ${st.artifact_dir}`;
  fill(document.querySelector("#instances tbody"), st.phases.flatMap(ph => ph.instances.map(i =>
    el("tr", { "data-instance": i.id },
      el("td", {}, ph.name), el("td", { class: "id" }, i.id), el("td", {}, pill(i.state)),
      el("td", { class: "num" }, i.pid || ""), el("td", { class: "num" }, i.restarts),
      el("td", { class: "num" }, i.open_rooms), el("td", { class: "num" }, i.inflight),
      el("td", {}, i.error || i.last_exit || "")))));
  fill(document.querySelector("#policies tbody"), st.policies.phases.map(p => {
    const agree = p.shadow_calls ? (100 * p.shadow_agree / p.shadow_calls).toFixed(0) + " %" : "";
    return el("tr", {}, el("td", {}, p.phase), el("td", {}, p.policy), el("td", { class: "num" }, p.decisions),
      el("td", { class: "num" }, p.fallbacks), el("td", {}, p.shadow || ""), el("td", { class: "num" }, agree));
  }));
  const c = st.counts || {};
  document.getElementById("counts").textContent =
    `${st.total} requests: ${c.queued || 0} queued, ${c.running || 0} running, ${c.done || 0} done, ${c.failed || 0} failed · ` +
    `instance exits ${st.instance_exits}, retried attempts ${st.retried}`;
}

function drawRequests(reqs) {
  // One time scale for every bar: the longest request shown.
  const now = Date.now();
  const span = r => ((r.finished ? Date.parse(r.finished) : now) - Date.parse(r.submitted));
  const scale = Math.max(1, ...reqs.map(span));
  document.getElementById("scale").textContent = `(full width ${ms(scale)})`;
  fill(document.querySelector("#requests tbody"), reqs.map(r => {
    const t0 = Date.parse(r.submitted);
    const bars = (r.timeline || []).filter(s => s.name !== "attempt").map(s => {
      const start = Date.parse(s.start) - t0;
      const end = (s.end ? Date.parse(s.end) : now) - t0;
      const what = `${s.name}${s.phase ? " " + s.phase : ""}: ${ms(end - start)}` +
        (s.bytes ? `, ${s.bytes} bytes over ${s.backend}` : "") + (s.detail ? ` (${s.detail})` : "");
      return el("div", { class: "span " + s.name, title: what, "data-span": s.name,
        style: { left: (100 * start / scale) + "%", width: (100 * Math.max(end - start, 0) / scale) + "%" } });
    });
    const tr = (r.progress || []).find(p => p.total > 1) || {};
    const frac = tr.total ? tr.done / tr.total : (r.state === "done" ? 1 : 0);
    let prog = r.state === "queued" && r.queue_position ? `#${r.queue_position} in queue` :
      tr.total ? `${tr.done}/${tr.total}` + (tr.steps_per_second ? ` · ${tr.steps_per_second.toFixed(1)}/s` : "") : "";
    return el("tr", { "data-id": r.id, "data-state": r.state },
      el("td", { class: "id" }, r.id), el("td", {}, pill(r.state)),
      el("td", {}, el("span", { class: "progress" }, el("div", { style: { width: (100 * frac) + "%" } })), " ", prog),
      el("td", {}, el("div", { class: "timeline" }, ...bars)),
      el("td", { class: "result", title: r.reason || r.artifact || "" }, r.reason || (r.artifact || "").split("/").pop()));
  }));
}

async function poll() {
  const err = document.getElementById("error");
  try {
    const st = await get(`v1/status?limit=${RECENT}&order=newest`);
    drawStatus(st);
    const recent = st.requests;
    const full = await Promise.all(recent.map(r => get("v1/requests/" + encodeURIComponent(r.id)).catch(() => r)));
    drawRequests(full);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    err.hidden = true;
    document.getElementById("login").hidden = true;
  } catch (e) {
    err.textContent = "No answer from the supervisor: " + e.message;
    err.hidden = false;
    document.getElementById("login").hidden = !e.login;
    const s = document.getElementById("state");
    s.textContent = "unreachable";
    s.dataset.state = "failed";
  }
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem("phased-token", document.getElementById("token").value.trim());
  poll();
});

let busy = false;
async function tick() {
  if (!busy) {
    busy = true;
    try { await poll(); } finally { busy = false; }
  }
}
tick();
setInterval(tick, POLL_MS);
