// vendorhost console: plain JavaScript, no build step. Five pages (overview,
// jobs, dead letters, plugins, usage) routed by the URL's hash, each drawn from the
// JSON API with the session cookie and the X-Requested-With header the API
// asks of cookie-borne requests. Charts are uPlot (vendor/uplot).
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const main = $("#main");
  const POLL_OVERVIEW_MS = 3000;
  const POLL_JOBS_MS = 5000;
  const HISTORY_POINTS = 120; // 6 minutes at 3 s
  const COLORS = ["#1f5fbf", "#c0262d", "#1a7f37", "#9a6700", "#7c3aed", "#0e7490", "#be185d", "#4b5563"];
  const STATUSES = ["pending", "processing", "complete", "failed", "cancelled"];
  const POLL_USAGE_MS = 30000;
  const HOUR_MS = 3600000;
  const DAY_MS = 24 * HOUR_MS;

  const session = { access: "open", apiKeys: false };
  let pageTimers = [];
  let pageCleanups = [];
  let lastJobsHash = "#/jobs";

  // ---- helpers ------------------------------------------------------------

  const esc = (s) =>
    String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  /** Builds an element: h("a", {href: "#"}, "text", child, ...). */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  // This year's times without the year: shorter rows.
  const thisYearFmt = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const thisYear = new Date().getFullYear();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  /** A time (RFC 3339 text or epoch ms) in the viewer's zone. */
  function when(t) {
    if (t === null || t === undefined || t === "") return "";
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return String(t);
    return (d.getFullYear() === thisYear ? thisYearFmt : timeFmt).format(d);
  }
  function ago(ms) {
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = ms / 1000;
    if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }
  const num = (n, digits = 0) =>
    n === null || n === undefined || Number.isNaN(n) ? "–" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const badge = (text, kind) => `<span class="badge b-${esc(kind || text)}">${esc(text)}</span>`;
  const badgeEl = (text, kind) => h("span", { class: `badge b-${kind || text}` }, text);
  /** datetime-local value (viewer's zone) → RFC 3339 UTC, or "". */
  function localToUtc(v) {
    if (!v) return "";
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? "" : d.toISOString();
  }
  /** RFC 3339 → datetime-local value in the viewer's zone. */
  function utcToLocal(v) {
    if (!v) return "";
    const d = new Date(v);
    if (Number.isNaN(d.getTime())) return "";
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  function toast(text) {
    const box = $("#toast");
    const el = h("div", {}, text);
    box.append(el);
    setTimeout(() => el.remove(), 5000);
  }

  function banner(kind, text) {
    return h("div", { class: `banner ${kind}`, role: kind === "error" ? "alert" : "note" }, text);
  }

  /** Asks with the page's own dialog (keyboard: Esc keeps, Enter confirms). */
  function confirmDialog(title, text, okLabel) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    dlg.returnValue = "";
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.showModal();
      $("#confirm-ok").focus();
    });
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the JSON API as the console (cookie + X-Requested-With). */
  async function api(path, { method = "GET", body, text = false } = {}) {
    const headers = { "X-Requested-With": "vendorhost-console", Accept: text ? "text/plain" : "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(path, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", "cannot reach vendorhost (is it running?)");
    }
    if (!r.ok) {
      const b = await r.json().catch(() => null);
      const err = new ApiError(r.status, b?.error?.code || "http", b?.error?.message || `${r.status} ${r.statusText}`);
      if (r.status === 401 && session.access === "key") {
        showLogin("Your session has ended; sign in again.");
      }
      throw err;
    }
    if (r.status === 204) return null;
    return text ? r.text() : r.json();
  }

  function every(ms, fn) {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try { await fn(); } catch (e) { /* each page shows its own errors */ }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
    pageTimers.push(() => { stopped = true; clearTimeout(timer); });
  }

  function setLive(text) {
    $("#live").textContent = text;
  }

  // ---- routing ------------------------------------------------------------

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/overview";
    const [path, query = ""] = raw.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(query) };
  }

  function leavePage() {
    pageTimers.forEach((stop) => stop());
    pageCleanups.forEach((fn) => fn());
    pageTimers = [];
    pageCleanups = [];
    setLive("");
  }

  async function route() {
    leavePage();
    if (session.access === "key" && !session.signedIn) return showLogin();
    if (session.access === "shut") return showShut();
    const { parts, params } = parseHash();
    const page = parts[0] || "overview";
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.page === page) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    main.replaceChildren();
    try {
      if (page === "jobs" && parts[1]) await jobDetail(parts[1]);
      else if (page === "jobs") await jobsPage(params);
      else if (page === "dead-letters") await deadLettersPage(params);
      else if (page === "plugins") await pluginsPage();
      else if (page === "usage") await usagePage(params);
      else await overviewPage();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) main.append(banner("error", e.message));
    }
  }

  function heading(text, ...extra) {
    const h1 = h("h1", { tabindex: "-1" }, text);
    main.append(extra.length ? h("div", { class: "row" }, h1, h("span", { class: "grow" }), ...extra) : h1);
    return h1;
  }

  // ---- sign-in --------------------------------------------------------------

  function showLogin(message) {
    leavePage();
    session.signedIn = false;
    $("#nav").hidden = true;
    $("#logout").hidden = true;
    const err = h("p", { class: "banner error", role: "alert", hidden: !message }, message || "");
    const input = h("input", { type: "password", id: "admin-key", name: "key", autocomplete: "current-password", required: true });
    const form = h("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        try {
          const r = await fetch("/ui/login", {
            method: "POST", credentials: "same-origin",
            headers: { "Content-Type": "application/json", "X-Requested-With": "vendorhost-console" },
            body: JSON.stringify({ key: input.value }),
          });
          if (!r.ok) {
            const b = await r.json().catch(() => null);
            throw new Error(b?.error?.message || `sign-in failed (${r.status})`);
          }
          session.signedIn = true;
          input.value = "";
          signedIn();
        } catch (e) {
          err.textContent = e.message === "unknown admin key" ? "That is not the admin key." : e.message;
          err.hidden = false;
          input.focus();
        }
      },
    },
      h("label", { class: "field", for: "admin-key" }, "Admin key (auth.admin_key)"), input,
      h("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in"));
    main.replaceChildren(h("div", { class: "panel login" }, h("h1", {}, "Sign in"),
      h("p", { class: "muted" }, "The console shows every job and acts on them: it needs the admin key."), err, form));
    input.focus();
  }

  function showShut() {
    $("#nav").hidden = true;
    main.replaceChildren(h("div", { class: "panel login" }, h("h1", {}, "Console shut"),
      h("p", {}, "API keys are on but no admin key is set, so the admin endpoints, and this console, are shut. Set ",
        h("code", {}, "auth.admin_key"), " and reload.")));
  }

  function signedIn() {
    $("#nav").hidden = false;
    $("#logout").hidden = session.access !== "key";
    route();
  }

  $("#logout").addEventListener("click", async () => {
    try { await api("/ui/logout", { method: "POST" }); } catch (e) { /* the cookie is cleared either way */ }
    showLogin("Signed out.");
  });

  // ---- /metrics parsing ---------------------------------------------------

  /** Prometheus text → [{name, labels, value}]. */
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const brace = line.indexOf("{");
      const space = line.indexOf(" ");
      let name, labels = {}, rest;
      if (brace !== -1 && (space === -1 || brace < space)) {
        name = line.slice(0, brace);
        let i = brace + 1;
        while (i < line.length && line[i] !== "}") {
          const eq = line.indexOf("=", i);
          const key = line.slice(i, eq).trim();
          let j = eq + 2; // past ="
          let val = "";
          while (j < line.length && line[j] !== '"') {
            if (line[j] === "\\" && j + 1 < line.length) {
              const n = line[j + 1];
              val += n === "n" ? "\n" : n;
              j += 2;
            } else val += line[j++];
          }
          labels[key] = val;
          i = j + 1;
          if (line[i] === ",") i++;
        }
        rest = line.slice(i + 1).trim();
      } else {
        name = line.slice(0, space);
        rest = line.slice(space + 1).trim();
      }
      const v = rest.split(" ")[0];
      const value = v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : parseFloat(v);
      out.push({ name, labels, value });
    }
    return out;
  }

  /** What the overview needs from one /metrics reading. */
  function summarize(samples) {
    const s = { finished: {}, completed: {}, failed: {}, cancelled: {}, calls: {}, callSum: {}, buckets: {}, delayed: {},
      rateDelayed: {}, depth: {}, dead: null };
    const add = (m, k, v) => { m[k] = (m[k] || 0) + v; };
    for (const { name, labels, value } of samples) {
      const v = labels.vendor;
      switch (name) {
        case "vendorhost_jobs_completed_total": add(s.completed, v, value); add(s.finished, v, value); break;
        case "vendorhost_jobs_failed_total": add(s.failed, v, value); add(s.finished, v, value); break;
        case "vendorhost_jobs_cancelled_total": add(s.cancelled, v, value); add(s.finished, v, value); break;
        case "vendorhost_vendor_call_seconds_count": add(s.calls, v, value); break;
        case "vendorhost_vendor_call_seconds_sum": add(s.callSum, v, value); break;
        case "vendorhost_vendor_call_seconds_bucket": {
          const b = (s.buckets[v] ||= {});
          add(b, labels.le, value);
          break;
        }
        case "vendorhost_jobs_delayed_total":
          add(s.delayed, v, value);
          if (labels.reason === "rate_limit") add(s.rateDelayed, v, value);
          break;
        case "vendorhost_queue_depth": s.depth[labels.state] = value; break;
        case "vendorhost_dead_letters": s.dead = value; break;
      }
    }
    return s;
  }

  /** The q-quantile (seconds) of the calls between two bucket readings. */
  function quantile(q, now, before) {
    if (!now) return null;
    const les = Object.keys(now).map((le) => [le === "+Inf" ? Infinity : parseFloat(le), le]).sort((a, b) => a[0] - b[0]);
    const cum = les.map(([bound, le]) => [bound, (now[le] || 0) - ((before && before[le]) || 0)]);
    const total = cum.length ? cum[cum.length - 1][1] : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let prevBound = 0, prevCount = 0;
    for (const [bound, count] of cum) {
      if (count >= rank) {
        if (bound === Infinity) return prevBound;
        const inBucket = count - prevCount;
        return inBucket > 0 ? prevBound + (bound - prevBound) * ((rank - prevCount) / inBucket) : bound;
      }
      prevBound = bound;
      prevCount = count;
    }
    return prevBound;
  }

  // ---- overview -------------------------------------------------------------

  /** Charts' memory survives page switches, so coming back shows the last minutes. */
  const history = { t: [], throughput: {}, latency: {}, last: null, lastAt: 0 };

  function chart(el, title, unit, seriesNames) {
    if (typeof uPlot === "undefined") return null;
    const width = Math.max(280, el.clientWidth - 4);
    const opts = {
      width, height: 220,
      title,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{ stroke: "#59636e" }, { stroke: "#59636e", label: unit, size: 56 }],
      series: [{}, ...seriesNames.map((n, i) => ({
        label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : `${num(v, v < 10 ? 2 : 0)} ${unit}`),
      }))],
    };
    return new uPlot(opts, [[], ...seriesNames.map(() => [])], el);
  }

  async function overviewPage() {
    heading("Overview");
    const err = h("div");
    const cards = h("div", { class: "cards", id: "cards" });
    const thrEl = h("div", { class: "panel chart", id: "chart-throughput", "data-samples": "0" });
    const latEl = h("div", { class: "panel chart", id: "chart-latency" });
    const table = h("div", { class: "table-wrap" });
    main.append(err, cards, h("div", { class: "charts" }, thrEl, latEl),
      h("h2", {}, "Vendors"), table,
      h("p", { class: "muted small" },
        "Throughput and latency are what this process has seen, sampled every 3 s from /metrics (a production API process does not run the workers: scrape them with Prometheus). Queue depth, breakers and dead letters are shared state."));
    let charts = { names: "", thr: null, lat: null };

    const draw = (vendors, s) => {
      const nowT = Date.now();
      const prev = history.last;
      const dt = prev ? (nowT - history.lastAt) / 1000 : 0;
      const names = vendors.map((v) => v.id);
      // A vendor no longer loaded stays while its jobs count (series at 0 are only the known series).
      for (const [n, c] of Object.entries(s.finished)) if (n && c > 0 && !names.includes(n)) names.push(n);
      names.sort();
      const rate = (m, pm, v) => (prev && dt > 0 ? Math.max(0, ((m[v] || 0) - ((pm && pm[v]) || 0)) / dt) : null);
      if (prev && dt > 0) {
        history.t.push(nowT / 1000);
        for (const v of names) {
          (history.throughput[v] ||= new Array(history.t.length - 1).fill(null)).push(rate(s.finished, prev.finished, v));
          const p95 = quantile(0.95, s.buckets[v], prev.buckets[v]);
          (history.latency[v] ||= new Array(history.t.length - 1).fill(null)).push(p95 === null ? null : p95 * 1000);
        }
        if (history.t.length > HISTORY_POINTS) {
          history.t.shift();
          for (const m of [history.throughput, history.latency]) for (const k of Object.keys(m)) m[k].shift();
        }
        for (const m of [history.throughput, history.latency]) {
          for (const k of Object.keys(m)) while (m[k].length < history.t.length) m[k].push(null);
        }
      }
      history.last = s;
      history.lastAt = nowT;
      thrEl.dataset.samples = String(history.t.length);

      // Cards.
      const totalRate = prev && dt > 0 ? names.reduce((a, v) => a + (rate(s.finished, prev.finished, v) || 0), 0) : null;
      const open = vendors.filter((v) => v.breaker && v.breaker.state !== "closed").length;
      const card = (label, value, href, id) => h("div", { class: "card", id },
        href ? h("a", { href }, h("div", { class: "label" }, label), h("div", { class: "value" }, value))
          : [h("div", { class: "label" }, label), h("div", { class: "value" }, value)]);
      cards.replaceChildren(
        card("Ready in queue", num(s.depth.ready), null, "card-ready"),
        card("Delayed (held back)", num(s.depth.delayed), null, "card-delayed"),
        card("Running (leased)", num(s.depth.leased), null, "card-leased"),
        card("Dead letters", num(s.dead), "#/dead-letters", "card-dead"),
        card("Finished / s", totalRate === null ? "…" : num(totalRate, 1), null, "card-rate"),
        card("Breakers not closed", `${open} / ${vendors.length}`, "#/plugins", "card-breakers"),
      );

      // Charts: rebuilt when the vendor set changes, else fed.
      const key = names.join(",");
      if (charts.names !== key || !charts.thr) {
        charts.thr?.destroy();
        charts.lat?.destroy();
        thrEl.replaceChildren();
        latEl.replaceChildren();
        charts = { names: key, thr: chart(thrEl, "Jobs finished per second", "jobs/s", names),
          lat: chart(latEl, "Vendor call latency, p95", "ms", names) };
      }
      const data = (m) => [history.t.slice(), ...names.map((v) => (m[v] || new Array(history.t.length).fill(null)).slice())];
      charts.thr?.setData(data(history.throughput));
      charts.lat?.setData(data(history.latency));

      // Vendor table.
      const rows = names.map((v) => {
        const vendor = vendors.find((x) => x.id === v);
        const b = vendor?.breaker;
        const calls = rate(s.calls, prev?.calls, v);
        const quota = vendor?.limits?.rate_per_second;
        const use = calls !== null && quota ? Math.min(1, calls / quota) : null;
        const p50 = quantile(0.5, s.buckets[v], prev?.buckets[v]);
        const p95 = quantile(0.95, s.buckets[v], prev?.buckets[v]);
        const held = rate(s.rateDelayed, prev?.rateDelayed, v);
        return `<tr data-vendor="${esc(v)}">
          <td><strong>${esc(v)}</strong>${vendor ? "" : ' <span class="muted small">(not loaded)</span>'}</td>
          <td>${b ? badge(b.state === "half_open" ? "half open" : b.state, b.state) : badge("none")}${b && b.state === "open" && b.open_until ? ` <span class="muted small">until ${esc(when(b.open_until))}</span>` : ""}</td>
          <td class="num wide">${b ? `${num(b.failure_rate, 0)}%` : "–"}</td>
          <td class="num">${calls === null ? "…" : num(calls, 2)}</td>
          <td class="nowrap">${use === null ? "–" : `<span class="meter${use > 0.9 ? " hot" : ""}" role="img" aria-label="${num(use * 100)}% of the rate limit"><span data-w="${Math.round(use * 100)}"></span></span>${num(use * 100)}%`} <span class="muted small">of ${quota ? num(quota, 1) : "–"}/s</span></td>
          <td class="num wide">${held === null ? "…" : num(held, 2)}</td>
          <td class="num">${p50 === null ? "–" : num(p50 * 1000, 1)}</td>
          <td class="num">${p95 === null ? "–" : num(p95 * 1000, 1)}</td>
          <td class="num wide">${num(s.completed[v] || 0)}</td>
          <td class="num wide">${num(s.failed[v] || 0)}</td>
        </tr>`;
      }).join("");
      table.innerHTML = `<table id="vendor-table"><thead><tr><th>Vendor</th><th>Breaker</th><th class="num wide">Failure rate</th>
        <th class="num">Calls/s</th><th>Rate-limit use</th><th class="num wide">Held back/s</th><th class="num">p50 ms</th>
        <th class="num">p95 ms</th><th class="num wide">Completed</th><th class="num wide">Failed</th></tr></thead>
        <tbody>${rows || '<tr><td colspan="10" class="muted">No vendors loaded.</td></tr>'}</tbody></table>`;
      // Widths through the CSSOM (the page's CSP allows no inline styles).
      for (const bar of table.querySelectorAll("[data-w]")) bar.style.width = `${bar.dataset.w}%`;
      setLive(`updated ${new Date().toLocaleTimeString()}`);
    };

    const load = async () => {
      try {
        const [text, vendors] = await Promise.all([api("/metrics", { text: true }), api("/vendors")]);
        err.replaceChildren();
        draw(vendors.vendors, summarize(parseMetrics(text)));
      } catch (e) {
        if (e.status !== 401) err.replaceChildren(banner("error", `Cannot refresh: ${e.message}`));
      }
    };
    await load();
    every(POLL_OVERVIEW_MS, load);
    const onResize = () => {
      for (const [c, el] of [[charts.thr, thrEl], [charts.lat, latEl]]) {
        if (c) c.setSize({ width: Math.max(280, el.clientWidth - 4), height: 220 });
      }
    };
    window.addEventListener("resize", onResize);
    pageCleanups.push(() => {
      window.removeEventListener("resize", onResize);
      charts.thr?.destroy();
      charts.lat?.destroy();
    });
  }

  // ---- jobs ---------------------------------------------------------------------

  /** Rows of the jobs list, kept for the detail view when GET /jobs/{id} is not the admin's. */
  const jobCache = new Map();

  function jobRow(j) {
    // UUID v7 ids share their time prefix: the narrow view shows the tail.
    const tail = j.request_id.slice(-8);
    return `<tr data-id="${esc(j.request_id)}" data-status="${esc(j.status)}" data-created="${esc(j.created_at)}">
      <td class="mono nowrap"><a href="#/jobs/${encodeURIComponent(j.request_id)}" title="${esc(j.request_id)}"><span class="wide">${esc(j.request_id)}</span><span class="narrow">…${esc(tail)}</span></a></td>
      <td>${esc(j.vendor)}</td>
      <td>${badge(j.status)}</td>
      <td class="num wide">${esc(j.attempts)}</td>
      <td class="nowrap">${esc(when(j.created_at))}</td>
      <td class="nowrap wide">${esc(when(j.updated_at))}</td>
      <td class="err">${esc(j.error || "")}</td>
    </tr>`;
  }

  async function vendorIds() {
    try {
      return (await api("/vendors")).vendors.map((v) => v.id);
    } catch (e) {
      return [];
    }
  }

  async function jobsPage(params) {
    lastJobsHash = location.hash || "#/jobs";
    heading("Jobs");
    const vendors = await vendorIds();
    const f = Object.fromEntries(["status", "vendor", "error", "created_after", "created_before", "key", "limit"].map((k) => [k, params.get(k) || ""]));
    if (f.vendor && !vendors.includes(f.vendor)) vendors.push(f.vendor);
    const opt = (v, label, cur) => h("option", { value: v, selected: v === cur }, label);
    const active = ["status", "vendor", "error", "created_after", "created_before", "key"].filter((k) => f[k]).length;
    const form = h("form", { class: "filters", role: "search", id: "job-filters", "aria-label": "Job filters" },
      h("label", { class: "field" }, "Status",
        h("select", { name: "status", id: "f-status" }, opt("", "any", f.status), STATUSES.map((s) => opt(s, s, f.status)))),
      h("label", { class: "field" }, "Vendor",
        h("select", { name: "vendor", id: "f-vendor" }, opt("", "any", f.vendor), vendors.map((v) => opt(v, v, f.vendor)))),
      h("label", { class: "field" }, "Error starts with",
        h("input", { name: "error", id: "f-error", value: f.error, placeholder: "vendor rejected" })),
      h("label", { class: "field date" }, "Created after",
        h("input", { type: "datetime-local", name: "created_after", id: "f-after", value: utcToLocal(f.created_after) })),
      h("label", { class: "field date" }, "Created before",
        h("input", { type: "datetime-local", name: "created_before", id: "f-before", value: utcToLocal(f.created_before) })),
      // With API keys on, jobs belong to a key (by its name): the tenant.
      session.apiKeys ? h("label", { class: "field" }, "API key name",
        h("input", { name: "key", id: "f-key", value: f.key, placeholder: "alice" })) : null,
      h("label", { class: "field" }, "Per page",
        h("select", { name: "limit", id: "f-limit" }, ["50", "100", "500"].map((n) => opt(n, n, f.limit || "100")))),
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary", id: "apply-filters" }, "Apply"),
        h("a", { href: "#/jobs", class: "button" }, "Reset")),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const fd = new FormData(form);
      const q = new URLSearchParams();
      for (const [k, v] of fd.entries()) {
        const val = k.startsWith("created_") ? localToUtc(v) : String(v).trim();
        if (val && !(k === "limit" && val === "100")) q.set(k, val);
      }
      const target = `#/jobs${q.toString() ? `?${q}` : ""}`;
      if (location.hash === target) route();
      else location.hash = target;
    });

    // Open on wide screens, or when a filter is set; folded on a phone.
    const box = h("details", { class: "panel filter-box", open: active > 0 || window.innerWidth > 700 },
      h("summary", {}, active ? `Filters (${active} set)` : "Filters"), form);
    const err = h("div");
    const live = h("input", { type: "checkbox", id: "live-jobs", checked: true });
    const count = h("span", { class: "muted", id: "job-count", "aria-live": "polite" });
    const tbody = h("tbody", { id: "job-rows" });
    const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
    main.append(box, err,
      h("div", { class: "row" }, count, h("span", { class: "grow" }),
        h("label", { class: "row small" }, live, "Refresh the first page every 5 s")),
      h("div", { class: "table-wrap" },
        h("table", { id: "jobs-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Vendor"), h("th", {}, "Status"), h("th", { class: "num wide" }, "Attempts"),
            h("th", {}, "Created"), h("th", { class: "wide" }, "Updated"), h("th", {}, "Error"))),
          tbody),
        h("div", { class: "table-foot" }, more)));

    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) query.set(k, v);
    if (!query.has("limit")) query.set("limit", "100");
    let cursor = null;
    let pages = 0;
    let shown = 0;
    let firstPageIds = "";

    const render = (jobs, append) => {
      for (const j of jobs) jobCache.set(j.request_id, j);
      const html = jobs.map(jobRow).join("");
      if (append) tbody.insertAdjacentHTML("beforeend", html);
      else tbody.innerHTML = html;
      shown = append ? shown + jobs.length : jobs.length;
      if (!shown) tbody.innerHTML = '<tr><td colspan="7" class="muted">No jobs match.</td></tr>';
      count.textContent = `${num(shown)} job${shown === 1 ? "" : "s"}${cursor ? " (more below)" : ""}`;
      more.hidden = !cursor;
    };
    const loadPage = async (append) => {
      const q = new URLSearchParams(query);
      if (append && cursor) q.set("cursor", cursor);
      const page = await api(`/jobs?${q}`);
      cursor = page.next_cursor;
      pages = append ? pages + 1 : 1;
      if (!append) firstPageIds = page.jobs.map((j) => `${j.request_id}:${j.status}:${j.attempts}`).join(",");
      render(page.jobs, append);
      setLive(`updated ${new Date().toLocaleTimeString()}`);
    };
    more.addEventListener("click", async () => {
      more.disabled = true;
      try { await loadPage(true); } catch (e) { err.replaceChildren(banner("error", e.message)); }
      more.disabled = false;
    });
    try {
      await loadPage(false);
    } catch (e) {
      if (e.status !== 401) err.replaceChildren(banner("error", e.message));
    }
    every(POLL_JOBS_MS, async () => {
      // Only the first page, only while nothing more is loaded and the
      // keyboard is not inside the table.
      if (!live.checked || pages > 1 || tbody.contains(document.activeElement)) return;
      const page = await api(`/jobs?${query}`);
      const ids = page.jobs.map((j) => `${j.request_id}:${j.status}:${j.attempts}`).join(",");
      if (ids !== firstPageIds) {
        firstPageIds = ids;
        cursor = page.next_cursor;
        render(page.jobs, false);
      }
      err.replaceChildren();
      setLive(`updated ${new Date().toLocaleTimeString()}`);
    });
  }

  async function findDeadLetter(requestId) {
    try {
      const { dead_letters } = await api("/admin/dead-letters?limit=10000");
      return dead_letters.find((d) => d.request_id === requestId) || null;
    } catch (e) {
      return null;
    }
  }

  function timelineOf(job, dead) {
    const items = [];
    const created = Date.parse(job.created_at);
    const updated = Date.parse(job.updated_at);
    items.push({ cls: "", title: "Submitted", when: job.created_at, text: `to ${job.vendor}` });
    const calls = job.attempts_log || [];
    if (calls.length) {
      // One row per recorded call (the store keeps the latest 20).
      const earlier = job.attempts - calls.length;
      if (earlier > 0) items.push({ cls: "grey", title: `${earlier} earlier vendor call${earlier === 1 ? "" : "s"}`, when: null, text: "not kept" });
      const label = { complete: "result", accepted: "accepted by the vendor", retryable_error: "retryable error", failed: "failed", cancelled: "cancelled" };
      calls.forEach((a, i) => {
        const cls = a.outcome === "complete" || a.outcome === "accepted" ? "good" : a.outcome === "cancelled" ? "grey" : "bad";
        items.push({ cls: `${cls} attempt`, title: `Call ${earlier + i + 1}: ${label[a.outcome] || a.outcome}`, when: a.started_at,
          text: `took ${ago(a.duration_ms)}${a.error ? ` — ${a.error}` : ""}` });
      });
    } else if (job.attempts > 0) {
      items.push({ cls: job.status === "processing" ? "" : "grey", title: job.attempts === 1 ? "1 vendor call started" : `${job.attempts} vendor calls started`,
        when: null, text: "" });
    }
    if (job.status === "pending" || job.status === "processing") {
      if (job.error) items.push({ cls: "bad", title: "Last retryable error", when: job.updated_at, text: job.error });
      items.push({ cls: "", title: job.status === "pending" ? "Waiting for a worker" : "Running", when: job.updated_at,
        text: `${ago(Date.now() - created)} since submit` });
    } else {
      const cls = job.status === "complete" ? "good" : job.status === "failed" ? "bad" : "grey";
      items.push({ cls, title: job.status[0].toUpperCase() + job.status.slice(1), when: job.updated_at,
        text: `${ago(updated - created)} after submit${job.error ? ` — ${job.error}` : ""}` });
    }
    if (dead) items.push({ cls: "bad", title: "Dead-lettered", when: dead.died_at, text: dead.reason, dead });
    if (job.notify) {
      const n = job.notify;
      const state = n.delivered_at ? `delivered (HTTP ${n.last_status ?? "?"})` : n.next_attempt_at ? `next try ${when(n.next_attempt_at)}` : n.attempts ? "gave up" : "not sent yet";
      items.push({ cls: n.delivered_at ? "good" : n.last_error ? "bad" : "", title: "Completion notification",
        when: n.delivered_at, text: `${n.url}: ${n.attempts} attempt${n.attempts === 1 ? "" : "s"}, ${state}${n.last_error ? ` — ${n.last_error}` : ""}` });
    }
    return items;
  }

  async function jobDetail(id) {
    const back = h("a", { href: lastJobsHash }, "← Jobs");
    main.append(h("p", {}, back));
    const holder = h("div");
    main.append(holder);
    let job = null;
    let full = false;
    const fetchJob = async () => {
      try {
        // The console's session reads any job, as the admin key does.
        job = await api(`/jobs/${encodeURIComponent(id)}`);
        full = true;
      } catch (e) {
        // Gone, or not readable here: the row the listing gave, if any.
        job = jobCache.get(id) || null;
        full = false;
      }
      return job;
    };
    const draw = async () => {
      const j = await fetchJob();
      if (!j) {
        holder.replaceChildren(banner("note", "This job is not in the list loaded here; open it from the jobs page."));
        return;
      }
      const dead = j.status === "failed" ? await findDeadLetter(id) : null;
      const running = j.status === "pending" || j.status === "processing";
      const cancel = running ? h("button", { type: "button", class: "danger", id: "cancel-job", onclick: async () => {
        const ok = await confirmDialog("Cancel this job?", `Job ${id} (${j.vendor}) is ${j.status}. A running vendor call is stopped and its outcome discarded.`, "Cancel job");
        if (!ok) return;
        try {
          const r = await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
          jobCache.set(id, r);
          toast(`Job …${id.slice(-8)} cancelled`);
        } catch (e) {
          toast(`Not cancelled: ${e.message}`);
        }
        draw();
      } }, "Cancel job") : null;
      const replay = dead ? h("button", { type: "button", id: "replay-job", onclick: async () => {
        try {
          await api(`/admin/dead-letters/${encodeURIComponent(dead.id)}/replay`, { method: "POST" });
          toast(`Job …${id.slice(-8)} replayed`);
        } catch (e) {
          toast(`Not replayed: ${e.message}`);
        }
        draw();
      } }, "Replay") : null;
      const items = timelineOf(j, dead);
      const dur = Date.parse(j.updated_at) - Date.parse(j.created_at);
      holder.replaceChildren(...[
        h("div", { class: "row" }, h("h1", { tabindex: "-1", id: "job-title" }, "Job ", h("span", { class: "mono" }, id)),
          badgeEl(j.status), h("span", { class: "grow" }), replay, cancel),
        h("div", { class: "detail" },
          h("section", { class: "panel", "aria-labelledby": "facts" }, h("h2", { id: "facts" }, "Facts"),
            h("dl", { class: "kv", id: "job-facts" },
              h("dt", {}, "Vendor"), h("dd", {}, j.vendor),
              h("dt", {}, "Status"), h("dd", { id: "job-status" }, j.status),
              h("dt", {}, "Attempts"), h("dd", {}, String(j.attempts)),
              h("dt", {}, "Created"), h("dd", {}, when(j.created_at)),
              h("dt", {}, "Updated"), h("dd", {}, when(j.updated_at)),
              h("dt", {}, running ? "Age" : "Took"), h("dd", {}, ago(running ? Date.now() - Date.parse(j.created_at) : dur)),
              j.error ? [h("dt", {}, "Error"), h("dd", {}, j.error)] : null,
              dead ? [h("dt", {}, "Dead letter"), h("dd", { class: "mono" }, dead.id)] : null)),
          h("section", { class: "panel", "aria-labelledby": "tl" }, h("h2", { id: "tl" }, "Timeline"),
            h("ol", { class: "timeline", id: "timeline" }, items.map((it) =>
              h("li", { class: it.cls }, h("strong", {}, it.title), it.when ? h("div", { class: "when" }, when(it.when)) : null,
                it.text ? h("div", {}, it.text) : null))),
            h("p", { class: "muted small" }, "Each vendor call is kept with its start, duration and outcome (the latest 20)."))),
        j.redactions && j.redactions.length ? h("section", { class: "panel" }, h("h2", {}, "Removed by cleaning"),
          h("ul", {}, j.redactions.map((r) => h("li", {}, h("code", {}, r.path), " — ", r.kind)))) : null,
        full && j.result !== undefined ? h("section", { class: "panel" }, h("h2", {}, "Result"),
          h("pre", { class: "json", tabindex: "0" }, JSON.stringify(j.result, null, 2))) : null,
        !full ? banner("note", "With API keys on, a job's result is shown only to the key that submitted it.") : null,
      ].filter(Boolean));
      setLive(`updated ${new Date().toLocaleTimeString()}`);
      return j;
    };
    await draw();
    $("#job-title")?.focus();
    every(2000, async () => {
      if (job && (job.status === "pending" || job.status === "processing") && !$("#confirm").open) {
        if (session.apiKeys) {
          // Refresh the cached row from the listing's first page of this vendor.
          const page = await api(`/jobs?vendor=${encodeURIComponent(job.vendor)}&limit=500`);
          for (const r of page.jobs) jobCache.set(r.request_id, r);
        }
        await draw();
      }
    });
  }

  // ---- dead letters --------------------------------------------------------

  async function deadLettersPage(params) {
    heading("Dead letters");
    const err = h("div");
    const result = h("div", { id: "bulk-result", "aria-live": "polite" });
    const vendorSel = h("select", { id: "dl-vendor", name: "vendor" }, h("option", { value: "" }, "any"));
    const reason = h("input", { id: "dl-reason", name: "reason", placeholder: "timeout", value: params.get("reason") || "" });
    const after = h("input", { type: "datetime-local", id: "dl-after" });
    const before = h("input", { type: "datetime-local", id: "dl-before" });
    const count = h("span", { id: "dl-count", class: "muted", "aria-live": "polite" });
    const replayBtn = h("button", { type: "button", class: "primary", id: "dl-replay" }, "Replay");
    const discardBtn = h("button", { type: "button", class: "danger", id: "dl-discard" }, "Discard");
    const refresh = h("button", { type: "button", id: "dl-refresh" }, "Refresh");
    const tbody = h("tbody", { id: "dl-rows" });
    main.append(err,
      h("form", { class: "panel filters", role: "search", "aria-label": "Dead letter filters", onsubmit: (e) => e.preventDefault() },
        h("label", { class: "field" }, "Vendor", vendorSel),
        h("label", { class: "field" }, "Reason contains", reason),
        h("label", { class: "field date" }, "Died after", after),
        h("label", { class: "field date" }, "Died before", before),
        h("div", { class: "actions" }, refresh)),
      h("div", { class: "row" }, count, h("span", { class: "grow" }), replayBtn, discardBtn),
      result,
      h("div", { class: "table-wrap" }, h("table", { id: "dl-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Died"), h("th", {}, "Vendor"), h("th", {}, "Job"), h("th", {}, "Reason"),
          h("th", { class: "wide" }, "Dead letter"), h("th", {}, ""))), tbody)));

    let all = [];
    let filtered = [];
    const MAX_ROWS = 1000;
    const apply = () => {
      const v = vendorSel.value;
      const r = reason.value.trim().toLowerCase();
      const a = after.value ? new Date(after.value).getTime() : null;
      const b = before.value ? new Date(before.value).getTime() : null;
      filtered = all.filter((d) => (!v || d.vendor === v) && (!r || d.reason.toLowerCase().includes(r))
        && (a === null || d.died_at >= a) && (b === null || d.died_at < b));
      const rows = filtered.slice(0, MAX_ROWS).map((d) => `<tr data-id="${esc(d.id)}">
        <td class="nowrap">${esc(when(d.died_at))}</td>
        <td>${esc(d.vendor || "–")}</td>
        <td class="mono nowrap">${d.request_id ? `<a href="#/jobs/${encodeURIComponent(d.request_id)}" title="${esc(d.request_id)}">…${esc(d.request_id.slice(-12))}</a>` : '<span class="muted">malformed entry</span>'}</td>
        <td class="err">${esc(d.reason)}</td>
        <td class="mono small wide">${esc(d.id)}</td>
        <td class="nowrap"><button type="button" class="link" data-act="replay" data-id="${esc(d.id)}" ${d.request_id ? "" : "disabled"}>Replay</button><button type="button" class="link" data-act="discard" data-id="${esc(d.id)}">Discard</button></td>
      </tr>`).join("");
      tbody.innerHTML = rows || `<tr><td colspan="6" class="muted">${all.length ? "No dead letters match." : "No dead letters. Nothing has died."}</td></tr>`;
      const filtering = filtered.length !== all.length;
      count.textContent = `${num(filtered.length)} of ${num(all.length)} dead letters${filtering ? " match" : ""}${filtered.length > MAX_ROWS ? ` (the first ${num(MAX_ROWS)} shown)` : ""}`;
      replayBtn.textContent = `Replay ${filtering ? "matching" : "all"} (${num(filtered.length)})`;
      discardBtn.textContent = `Discard ${filtering ? "matching" : "all"} (${num(filtered.length)})`;
      replayBtn.disabled = discardBtn.disabled = filtered.length === 0;
    };
    const load = async () => {
      const { dead_letters } = await api("/admin/dead-letters?limit=10000");
      all = dead_letters.sort((x, y) => y.died_at - x.died_at);
      const vendors = [...new Set(all.map((d) => d.vendor).filter(Boolean))].sort();
      const cur = vendorSel.value || params.get("vendor") || "";
      vendorSel.replaceChildren(h("option", { value: "" }, "any"), ...vendors.map((v) => h("option", { value: v, selected: v === cur }, v)));
      apply();
      setLive(`updated ${new Date().toLocaleTimeString()}`);
    };
    const bulk = async (action, ids) => {
      const r = await api("/admin/dead-letters/bulk", { method: "POST", body: { action, ids } });
      const verb = action === "replay" ? "Replayed" : "Discarded";
      const lines = [`${verb} ${num(r.done.length)} dead letter${r.done.length === 1 ? "" : "s"}.`];
      if (r.failed.length) lines.push(`${num(r.failed.length)} could not be: ${r.failed.slice(0, 3).map((f) => f.message).join("; ")}${r.failed.length > 3 ? "; …" : ""}`);
      result.replaceChildren(banner(r.failed.length ? "error" : "note", lines.join(" ")));
      toast(lines[0]);
      await load();
    };
    const onBulk = (action) => async () => {
      const ids = filtered.map((d) => d.id);
      if (!ids.length) return;
      const what = action === "replay" ? "Replay" : "Discard";
      const ok = await confirmDialog(`${what} ${num(ids.length)} dead letter${ids.length === 1 ? "" : "s"}?`,
        action === "replay" ? "Each job goes back through the queue with its attempts reset." : "The dead letters are removed; their jobs stay failed.",
        what);
      if (!ok) return;
      try { await bulk(action, ids.slice(0, 10000)); } catch (e) { result.replaceChildren(banner("error", e.message)); }
    };
    replayBtn.addEventListener("click", onBulk("replay"));
    discardBtn.addEventListener("click", onBulk("discard"));
    tbody.addEventListener("click", async (ev) => {
      const btn = ev.target.closest("button[data-act]");
      if (!btn) return;
      try { await bulk(btn.dataset.act, [btn.dataset.id]); } catch (e) { result.replaceChildren(banner("error", e.message)); }
    });
    let debounce = null;
    for (const el of [vendorSel, reason, after, before]) {
      el.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(apply, 120); });
    }
    refresh.addEventListener("click", () => load().catch((e) => err.replaceChildren(banner("error", e.message))));
    await load();
  }

  // ---- plugins ----------------------------------------------------------------

  async function pluginsPage() {
    heading("Plugins");
    const r = await api("/vendors");
    const rows = r.vendors.map((v) => `<tr data-vendor="${esc(v.id)}">
      <td><strong>${esc(v.id)}</strong><div class="muted small">${esc(v.display_name)}</div></td>
      <td class="wide">${esc(v.mode)}</td>
      <td class="mono">${esc(v.version)}</td>
      <td class="mono small" title="${esc(v.sha256)}"><span class="wide">${esc(v.sha256)}</span><span class="narrow">${esc(v.sha256.slice(0, 12))}…</span></td>
      <td class="mono small">${esc(v.file)}</td>
      <td class="nowrap">${esc(when(v.loaded_at))}</td>
      <td class="small wide">${num(v.limits.rate_per_second, 1)}/s, burst ${esc(v.limits.burst)}, ${esc(v.limits.max_in_flight)} in flight, ${num(v.limits.timeout_ms)} ms${v.limits.allowed_hosts.length ? `<div class="muted">grants: ${esc(v.limits.allowed_hosts.join(", "))}</div>` : ""}</td>
      <td>${v.breaker ? badge(v.breaker.state === "half_open" ? "half open" : v.breaker.state, v.breaker.state) : badge("none")}</td>
    </tr>`).join("");
    const loaded = h("div", { class: "table-wrap" });
    loaded.innerHTML = `<table id="plugins-table"><thead><tr><th>Vendor</th><th class="wide">Mode</th><th>Version</th><th>SHA-256</th><th>File</th><th>Loaded</th><th class="wide">Limits</th><th>Breaker</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="8" class="muted">No plugins loaded.</td></tr>'}</tbody></table>`;
    const rejected = h("div", { class: "table-wrap" });
    rejected.innerHTML = `<table id="rejected-table"><thead><tr><th>File</th><th>Reason</th></tr></thead><tbody>${
      r.rejected.map((x) => `<tr><td class="mono">${esc(x.file)}</td><td class="err">${esc(x.reason)}</td></tr>`).join("")
      || '<tr><td colspan="2" class="muted">No file was rejected.</td></tr>'}</tbody></table>`;
    const hist = h("div", { class: "table-wrap" });
    hist.innerHTML = `<table id="history-table"><thead><tr><th>When</th><th>Event</th><th>Vendor</th><th>File</th><th>Version</th><th>Detail</th></tr></thead><tbody>${
      (r.history || []).map((e) => `<tr><td class="nowrap">${esc(when(e.at))}</td><td>${badge(e.kind)}</td><td>${esc(e.vendor || "–")}</td>
        <td class="mono small">${esc(e.file)}</td><td class="mono">${esc(e.version || "")}</td>
        <td class="err small">${e.reason ? esc(e.reason) : e.sha256 ? `<span class="mono" title="${esc(e.sha256)}">sha256 ${esc(e.sha256.slice(0, 12))}…</span>` : ""}</td></tr>`).join("")
      || '<tr><td colspan="6" class="muted">Nothing loaded yet.</td></tr>'}</tbody></table>`;
    main.append(loaded, h("h2", {}, `Rejected files (${r.rejected.length})`), rejected,
      h("h2", {}, "Reload history"), hist,
      h("p", { class: "muted small" }, "Drop a .wasm file in the plugins directory to add or upgrade a vendor; the history lists this process's last 100 changes."));
  }

  // ---- usage ------------------------------------------------------------------

  const bytes = (n) => {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return `${num(v, i && v < 10 ? 1 : 0)} ${units[i]}`;
  };

  /** Calls per hour (24 h) or per day (30 days), per key and vendor, from GET /usage; limits and quotas from GET /vendors. */
  async function usagePage(params) {
    heading("Usage");
    const view = params.get("view") === "day" ? "day" : "hour";
    const f = { key: params.get("key") || "", vendor: params.get("vendor") || "" };
    const err = h("div");
    const keySel = h("select", { id: "u-key", name: "key" });
    const vendorSel = h("select", { id: "u-vendor", name: "vendor" });
    const viewSel = h("select", { id: "u-view", name: "view" },
      h("option", { value: "hour", selected: view === "hour" }, "Last 24 h, per hour"),
      h("option", { value: "day", selected: view === "day" }, "Last 30 days, per day"));
    const form = h("form", { class: "panel filters", role: "search", id: "usage-filters", "aria-label": "Usage filters" },
      h("label", { class: "field" }, "API key name", keySel),
      h("label", { class: "field" }, "Vendor", vendorSel),
      h("label", { class: "field" }, "View", viewSel),
      h("div", { class: "actions" }, h("a", { href: "#/usage", class: "button" }, "Reset")));
    const go = () => {
      const q = new URLSearchParams();
      if (keySel.value) q.set("key", keySel.value);
      if (vendorSel.value) q.set("vendor", vendorSel.value);
      if (viewSel.value === "day") q.set("view", "day");
      const target = `#/usage${q.toString() ? `?${q}` : ""}`;
      if (location.hash === target) route();
      else location.hash = target;
    };
    form.addEventListener("change", go);
    form.addEventListener("submit", (ev) => { ev.preventDefault(); go(); });
    const cards = h("div", { class: "cards", id: "usage-cards" });
    const byKeyEl = h("div", { class: "panel chart", id: "chart-usage-keys" });
    const byVendorEl = h("div", { class: "panel chart", id: "chart-usage-vendors" });
    const table = h("div", { class: "table-wrap" });
    const limits = h("div", { class: "table-wrap" });
    const unit = view === "day" ? "day" : "hour";
    main.append(form, err, cards, h("div", { class: "charts" }, byKeyEl, byVendorEl),
      h("h2", {}, view === "day" ? "By key and vendor, last 30 days" : "By key and vendor, last 24 hours"), table,
      h("h2", {}, "Per-key limits and quotas"), limits,
      h("p", { class: "muted small" },
        "Every vendor call counts once, retries included; bytes are the plugins' HTTP traffic. Quotas count calls per UTC day or month and reset at the time shown. Key names come from auth.api_keys and [auth.keys.<name>]; \"-\" is jobs submitted with keys off."));
    let charts = [];

    const draw = (rows, vlist) => {
      // Filters list every known name, the chosen one kept even when idle.
      const keyNames = new Set((vlist.keys || []).map((k) => k.name));
      const vendorNames = new Set(vlist.vendors.map((v) => v.id));
      for (const r of rows) { keyNames.add(r.key); vendorNames.add(r.vendor); }
      if (f.key) keyNames.add(f.key);
      if (f.vendor) vendorNames.add(f.vendor);
      const opts = (sel, names, cur) => sel.replaceChildren(h("option", { value: "" }, "any"),
        ...[...names].sort().map((n) => h("option", { value: n, selected: n === cur }, n)));
      opts(keySel, keyNames, f.key);
      opts(vendorSel, vendorNames, f.vendor);

      // Buckets: every hour (or day) of the window, empty ones at 0.
      const step = view === "day" ? DAY_MS : HOUR_MS;
      const nowT = Date.now();
      const from = view === "day" ? Math.floor(nowT / DAY_MS) * DAY_MS - 29 * DAY_MS : Math.floor((nowT - DAY_MS) / HOUR_MS) * HOUR_MS;
      const xs = [];
      for (let t = from; t <= nowT; t += step) xs.push(t);
      const series = (by) => {
        const m = new Map();
        for (const r of rows) {
          const i = Math.floor((Date.parse(r.from) - from) / step);
          if (i < 0 || i >= xs.length) continue;
          const name = r[by];
          if (!m.has(name)) m.set(name, new Array(xs.length).fill(0));
          m.get(name)[i] += r.calls;
        }
        return [...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
      };
      for (const { c } of charts) c.destroy();
      charts = [];
      for (const [el, by, title] of [[byKeyEl, "key", `Calls per ${unit} by API key`], [byVendorEl, "vendor", `Calls per ${unit} by vendor`]]) {
        const s = series(by);
        el.replaceChildren();
        el.dataset.series = String(s.length);
        const c = chart(el, title, "calls", s.map(([n]) => n));
        if (c) {
          c.setData([xs.map((t) => t / 1000), ...s.map(([, v]) => v)]);
          charts.push({ c, el });
        }
        if (!s.length) el.append(h("p", { class: "muted empty" }, "No vendor calls in this window."));
      }

      // Totals per (key, vendor).
      const sums = new Map();
      const total = { calls: 0, bytes_in: 0, bytes_out: 0, cpu_ms: 0, latency_ms: 0 };
      for (const r of rows) {
        const id = `${r.key}\u0000${r.vendor}`;
        const t = sums.get(id) || { key: r.key, vendor: r.vendor, calls: 0, bytes_in: 0, bytes_out: 0, cpu_ms: 0, latency_ms: 0 };
        for (const k of ["calls", "bytes_in", "bytes_out", "cpu_ms", "latency_ms"]) { t[k] += r[k]; total[k] += r[k]; }
        sums.set(id, t);
      }
      const card = (label, value, id) => h("div", { class: "card", id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
      cards.replaceChildren(
        card(view === "day" ? "Calls, 30 days" : "Calls, 24 h", num(total.calls), "card-calls"),
        card("Bytes in", bytes(total.bytes_in), "card-bytes-in"),
        card("Bytes out", bytes(total.bytes_out), "card-bytes-out"),
        card("CPU time", `${num(total.cpu_ms / 1000, 1)} s`, "card-cpu"),
        card("Mean latency", total.calls ? `${num(total.latency_ms / total.calls, 0)} ms` : "–", "card-latency"));
      const trs = [...sums.values()].map((t) => `<tr data-key="${esc(t.key)}" data-vendor="${esc(t.vendor)}" data-calls="${t.calls}">
        <td><strong>${esc(t.key)}</strong></td><td>${esc(t.vendor)}</td>
        <td class="num">${num(t.calls)}</td><td class="num">${bytes(t.bytes_in)}</td><td class="num wide">${bytes(t.bytes_out)}</td>
        <td class="num wide">${num(t.cpu_ms, 1)}</td><td class="num">${t.calls ? num(t.latency_ms / t.calls, 0) : "–"}</td></tr>`).join("");
      table.innerHTML = `<table id="usage-table"><thead><tr><th>API key</th><th>Vendor</th><th class="num">Calls</th><th class="num">Bytes in</th>
        <th class="num wide">Bytes out</th><th class="num wide">CPU ms</th><th class="num">Mean latency ms</th></tr></thead>
        <tbody>${trs || '<tr><td colspan="7" class="muted">No vendor calls in this window.</td></tr>'}</tbody></table>`;

      // Limits in force and quotas used, per key name.
      const keys = (vlist.keys || []).filter((k) => !f.key || k.name === f.key);
      const lrows = keys.map((k) => {
        const quotas = k.quotas.filter((q) => !f.vendor || q.vendor === f.vendor).map((q) => {
          const use = q.limit ? Math.min(1, q.used / q.limit) : 1;
          return `<div class="nowrap" data-quota="${esc(q.vendor)}"><strong>${esc(q.vendor)}</strong> <span class="meter${use > 0.9 ? " hot" : ""}" role="img" aria-label="${num(use * 100)}% of the quota used"><span data-w="${Math.round(use * 100)}"></span></span>${num(q.used)} / ${num(q.limit)} per ${esc(q.per)} <span class="muted small">resets ${esc(when(q.resets_at))}</span></div>`;
        }).join("");
        return `<tr data-key="${esc(k.name)}">
          <td><strong>${esc(k.name)}</strong></td>
          <td class="nowrap">${k.submit_rate === undefined ? '<span class="muted">no limit</span>' : `${num(k.submit_rate, 1)}/s, burst ${num(k.submit_burst)}`}</td>
          <td class="nowrap">${k.max_in_flight === undefined ? '<span class="muted">no limit</span>' : `${num(k.in_flight)} of ${num(k.max_in_flight)}`}</td>
          <td class="num wide">${num(k.weight, k.weight % 1 ? 2 : 0)}</td>
          <td>${quotas || '<span class="muted">none</span>'}</td></tr>`;
      }).join("");
      limits.innerHTML = `<table id="limits-table"><thead><tr><th>API key</th><th>Submit rate</th><th>In flight</th><th class="num wide">Fair-share weight</th><th>Quotas: used / limit</th></tr></thead>
        <tbody>${lrows || `<tr><td colspan="5" class="muted">${vlist.keys ? "No API keys configured (auth.api_keys)." : "Limits are unavailable: the store did not answer."}</td></tr>`}</tbody></table>`;
      for (const bar of limits.querySelectorAll("[data-w]")) bar.style.width = `${bar.dataset.w}%`;
      setLive(`updated ${new Date().toLocaleTimeString()}`);
    };

    const load = async () => {
      const q = new URLSearchParams();
      if (f.key) q.set("key", f.key);
      if (f.vendor) q.set("vendor", f.vendor);
      if (view === "day") {
        q.set("granularity", "day");
        q.set("from", new Date(Math.floor(Date.now() / DAY_MS) * DAY_MS - 29 * DAY_MS).toISOString());
      }
      try {
        const [u, vlist] = await Promise.all([api(`/usage${q.toString() ? `?${q}` : ""}`), api("/vendors")]);
        err.replaceChildren();
        draw(u.usage, vlist);
      } catch (e) {
        if (e.status !== 401) err.replaceChildren(banner("error", `Cannot load usage: ${e.message}`));
      }
    };
    await load();
    every(POLL_USAGE_MS, load);
    const onResize = () => {
      for (const { c, el } of charts) {
        c.setSize({ width: Math.max(280, el.clientWidth - 4), height: 220 });
      }
    };
    window.addEventListener("resize", onResize);
    pageCleanups.push(() => {
      window.removeEventListener("resize", onResize);
      for (const { c } of charts) c.destroy();
    });
  }

  // ---- start ----------------------------------------------------------------

  async function start() {
    $("#tz").textContent = `Times in ${zone}`;
    try {
      const r = await fetch("/ui/session", { credentials: "same-origin", cache: "no-store" });
      const s = await r.json();
      session.access = s.access;
      session.signedIn = s.signed_in;
      session.apiKeys = !!s.api_keys;
    } catch (e) {
      main.replaceChildren(banner("error", "Cannot reach vendorhost."));
      return;
    }
    window.addEventListener("hashchange", () => {
      if (session.access !== "key" || session.signedIn) route();
    });
    if (session.access === "key" && !session.signedIn) showLogin();
    else if (session.access === "shut") showShut();
    else signedIn();
  }

  start();
})();
