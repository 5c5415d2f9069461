// The Locus dashboard: polls this agent's API every second and redraws.
// Everything shown is written with textContent (names, policy messages and
// outcomes come from tenants and policies: never parsed as HTML). On TCP
// the API wants the bearer token: open the page as /#token=TOKEN once; the
// token is kept for the tab's session and taken out of the address bar.
"use strict";

const EVERY_MS = 1000;
// Every agent's policy status grows with the cluster: read it every 5th time.
const POLICIES_EVERY = 5;
let ticks = 0;
let rollouts = null;
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("locus-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("locus-token");
})();

async function get(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) {
    let why = r.status + " " + r.statusText;
    try { why = (await r.json()).error || why; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + why);
  }
  return r.json();
}

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else if (c && typeof c === "object") { const td = el("td", c.text, c.cls); if (c.title) td.title = c.title; tr.appendChild(td); }
    else tr.appendChild(el("td", c));
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    const td = el("td", empty, "empty");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    const tr = document.createElement("tr"); tr.appendChild(td); fresh.appendChild(tr);
  }
  rows.forEach((r) => fresh.appendChild(r));
  body.replaceWith(fresh);
}

const num = (text) => ({ text, cls: "num" });
const mib = (m) => (m >= 10240 ? (m / 1024).toFixed(0) + " GiB" : m + " MiB");
const ms = (v) => (v === null || v === undefined ? "–" : v.toFixed(1) + " ms");
const tag = (text, kind) => el("span", text, "tag " + (kind || ""));

function liveness(l) {
  return tag(l, l === "alive" ? "ok" : l === "suspect" ? "warn" : "bad");
}
function loadTag(l) {
  if (!l) return "–";
  return tag(l, l === "normal" ? "ok" : l === "overloaded" ? "bad" : "warn");
}
function stateTag(s) {
  return tag(s, s === "running" ? "ok" : s === "lost" || s === "crashed" ? "bad" : "");
}
// Carbon intensity, from green (clean) to red.
function carbonColor(g) {
  const t = Math.max(0, Math.min(1, g / 600));
  const hue = 140 - 140 * t;
  return "hsl(" + hue + ", 60%, 50%)";
}

// The part of the world the PoPs are in, with a margin, 2:1 like the map.
function fitMap(pops) {
  const at = pops.filter((p) => p.location).map((p) => p.location);
  let [x0, x1, y0, y1] = [-180, 180, -84, 84];
  if (at.length) {
    const lons = at.map((l) => l.lon), lats = at.map((l) => -l.lat);
    const w = Math.min(360, Math.max(50, Math.max(...lons) - Math.min(...lons) + 40,
      2 * (Math.max(...lats) - Math.min(...lats) + 30)));
    const cx = (Math.max(...lons) + Math.min(...lons)) / 2, cy = (Math.max(...lats) + Math.min(...lats)) / 2;
    x0 = Math.max(-180, Math.min(180 - w, cx - w / 2)); x1 = x0 + w;
    y0 = Math.max(-90, Math.min(90 - w / 2, cy - w / 4)); y1 = y0 + w / 2;
  }
  $("map").querySelector("svg").setAttribute("viewBox", x0 + " " + y0 + " " + (x1 - x0) + " " + (y1 - y0));
  return (x1 - x0) / 360;
}

function drawMap(cluster) {
  const k = fitMap(cluster.pops);
  const g = $("pops");
  const fresh = document.createElementNS("http://www.w3.org/2000/svg", "g");
  fresh.id = "pops";
  for (const p of cluster.pops) {
    if (!p.location) continue;
    const grp = document.createElementNS(fresh.namespaceURI, "g");
    grp.setAttribute("class", "pop" + (p.pop === cluster.pop ? " mine" : ""));
    grp.setAttribute("data-pop", p.pop);
    const c = document.createElementNS(fresh.namespaceURI, "circle");
    c.setAttribute("cx", p.location.lon);
    c.setAttribute("cy", -p.location.lat);
    c.setAttribute("r", k * (2.2 + Math.sqrt(Math.max(1, p.hosts)) * 1.2));
    c.setAttribute("fill", p.hosts_alive === 0 ? "#e5534b" : carbonColor(p.carbon_g_per_kwh));
    const title = document.createElementNS(fresh.namespaceURI, "title");
    title.textContent = p.pop + ": " + p.hosts_alive + "/" + p.hosts + " hosts alive, " +
      p.carbon_g_per_kwh + " gCO2/kWh, " + p.renewable_watts + " W renewable unused";
    c.appendChild(title);
    const t = document.createElementNS(fresh.namespaceURI, "text");
    t.setAttribute("x", p.location.lon + k * 5);
    t.setAttribute("y", -p.location.lat + k * 1.6);
    t.setAttribute("font-size", k * 5);
    t.setAttribute("stroke-width", k * 0.9);
    t.textContent = p.pop + " · " + p.hosts_alive + "/" + p.hosts;
    grp.appendChild(c);
    grp.appendChild(t);
    fresh.appendChild(grp);
  }
  g.replaceWith(fresh);
}

function drawHost(h, overlay) {
  const k = $("kpis");
  k.replaceChildren();
  const kpi = (value, label) => {
    const d = el("div", null, "kpi");
    d.appendChild(el("b", value));
    d.appendChild(el("span", label));
    k.appendChild(d);
  };
  kpi(h.vms.running + " / " + h.vms.total, "VMs running");
  kpi(h.allocated.vcpus + " / " + h.capacity.vcpus, "vCPUs allocated");
  kpi(mib(h.allocated.memory_mib) + " / " + mib(h.capacity.memory_mib), "memory allocated");
  kpi((h.load_cpu_milli / 1000).toFixed(2) + " / " + (h.cpu_milli / 1000).toFixed(0), "CPU demand");
  kpi(h.load_state, "load");
  kpi(h.watts + " W", "power (" + h.power + ")");
  kpi(h.pop_carbon_g_per_kwh + " g/kWh", "grid carbon");
  kpi(h.pop_renewable_watts + " W", "renewable unused");
  kpi(overlay.connected, "overlay peers");
  kpi(h.deciding, "placements waiting");
  kpi(h.hypervisor.state, "hypervisor");
}

function drawPops(cluster) {
  fill("pop-table", cluster.pops.map((p) => row([
    { text: p.pop + (p.pop === cluster.pop ? " (this)" : "") },
    p.jurisdiction,
    num(p.hosts_alive + " / " + p.hosts),
    num(p.free.vcpus),
    num(mib(p.free.memory_mib)),
    num(ms(p.rtt_ms)),
    num(p.renewable_watts + " W"),
    { text: p.carbon_g_per_kwh + " g/kWh", cls: "num" },
  ])), "no PoP known yet");
}

function drawHosts(cluster) {
  const mine = cluster.hosts.filter((h) => h.pop === cluster.pop);
  fill("host-table", mine.map((h) => row([
    h.host + (h.host === cluster.host ? " (this)" : ""),
    liveness(h.liveness),
    loadTag(h.load),
    num(h.vms),
    num(h.free ? h.free.vcpus : "–"),
    num(h.free ? mib(h.free.memory_mib) : "–"),
    num(ms(h.rtt_ms)),
  ])), "no host heard from yet");
}

function drawVms(vms) {
  vms.sort((a, b) => a.name.localeCompare(b.name));
  fill("vm-table", vms.map((v) => row([
    v.name,
    stateTag(v.state),
    num(v.spec.vcpus),
    num(mib(v.spec["memory-mib"])),
    num(v.cpu_milli === null || v.cpu_milli === undefined ? "–" : (v.cpu_milli / 1000).toFixed(2)),
    v.busy || v.pending || v.handoff || "",
  ])), "no VM on this host");
}

function drawDecisions(records) {
  fill("decision-table", records.map((r) => {
    const who = r["decided-by"] === "policy" ? (r.policy || "policy") : r["decided-by"];
    const whoCell = el("span", who, r["decided-by"] === "fallback" ? "tag warn" : "");
    if (r.failure) whoCell.title = r.failure.kind + ": " + r.failure.message;
    const left = r.filters.length ? r.filters[r.filters.length - 1].hosts : 0;
    return row([
      new Date(r["at-ms"]).toLocaleTimeString(),
      r.vm,
      tag(r.kind, r.kind === "placement" ? "" : "warn"),
      whoCell,
      r.chosen || "–",
      num(r.filters.length ? left + " / " + r.considered : "–"),
      { text: r.outcome, title: r.request },
      num(r["took-us"] ? (r["took-us"] / 1000).toFixed(1) + " ms" : "–"),
    ]);
  }), "no decision taken by this agent yet");
}

function drawPolicies(status) {
  // Per PoP and slot: each policy version, the agents running it, their calls and failures.
  const groups = new Map();
  for (const a of status.agents) {
    for (const s of a.slots) {
      const key = a.pop + "\u0000" + s.slot + "\u0000" + s.policy;
      const g = groups.get(key) || { pop: a.pop, slot: s.slot, policy: s.policy, agents: 0, calls: 0, failures: 0 };
      g.agents += 1; g.calls += s.calls; g.failures += s.failures;
      groups.set(key, g);
    }
  }
  const rows = [...groups.values()].sort((a, b) =>
    a.pop.localeCompare(b.pop) || a.slot.localeCompare(b.slot) || a.policy.localeCompare(b.policy));
  fill("policy-table", rows.map((g) => row([
    g.pop, g.slot, g.policy, num(g.agents), num(g.calls),
    { text: g.failures, cls: "num" + (g.failures > 0 ? " bad" : "") },
  ])), "no policy status heard yet");
}

async function refresh() {
  try {
    const policies = ticks++ % POLICIES_EVERY === 0 || !rollouts ? get("/v1/rollouts") : Promise.resolve(rollouts);
    const [view, host, vms, decisions, status] = await Promise.all([
      get("/v1/cluster"), get("/v1/host"), get("/v1/vms"), get("/v1/decisions?limit=25"), policies,
    ]);
    rollouts = status;
    const cluster = view.cluster;
    $("where").textContent = "host " + cluster.host + " · PoP " + cluster.pop + " · " +
      cluster.pops.length + " PoP(s)";
    drawMap(cluster);
    drawHost(host, view.overlay);
    drawPops(cluster);
    drawHosts(cluster);
    drawVms(vms);
    drawDecisions(decisions);
    drawPolicies(rollouts);
    $("dot").className = "dot live";
    $("updated").textContent = "live · " + new Date().toLocaleTimeString();
    $("error").textContent = "";
  } catch (e) {
    $("dot").className = "dot down";
    $("error").textContent = String(e.message || e);
  }
}

refresh();
setInterval(refresh, EVERY_MS);
