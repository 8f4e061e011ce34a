"use strict";
// The live page: polls /api/state (which answers once a second) and draws each session as
// paths from its client, one per subflow, to the converter, and the server
// leg beyond it. Rates come from two successive states and their sample
// times. Subflows and sessions that left the table stay on screen, greyed.
(function () {
  const POLL_MS = 1000; // between tries while the converter does not answer
  const KEEP_CLOSED_MS = 30000; // a closed subflow stays drawn this long
  const KEEP_ENDED_MS = 15000;  // an ended session too
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = 6;

  const mem = new Map(); // session id -> model
  let lastTime = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, parent, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function h(tag, cls, text, parent) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }
  function fmtRate(bytesPerSec) {
    let v = bytesPerSec * 8;
    const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (v < 10 && i > 0 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }
  function fmtAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function clock(ms) {
    return new Date(ms).toTimeString().slice(0, 8);
  }
  function hostOf(addrPort) {
    const i = addrPort.lastIndexOf(":");
    return i < 0 ? addrPort : addrPort.slice(0, i).replace(/^\[|\]$/g, "");
  }

  // rate updates prev (bytes at the last distinct sample) and returns
  // bytes/s since it, or the last rate for a repeated sample.
  function rate(track, bytes, t) {
    if (!track.prev) { track.prev = { t, bytes }; track.rate = 0; return 0; }
    if (t > track.prev.t) {
      track.rate = Math.max(0, (bytes - track.prev.bytes) * 1000 / (t - track.prev.t));
      track.prev = { t, bytes };
    }
    return track.rate;
  }

  // merge folds one state into the models.
  function merge(st) {
    const t = st.time;
    const seen = new Set();
    for (const s of st.sessions || []) {
      seen.add(s.id);
      let m = mem.get(s.id);
      if (!m) {
        m = { id: s.id, subflows: new Map(), nextColor: 0, down: {}, up: {} };
        mem.set(s.id, m);
      }
      m.info = s; m.ended = null;
      const present = new Set();
      for (const sf of s.subflows || []) {
        const key = sf.local + "|" + sf.remote;
        present.add(key);
        let f = m.subflows.get(key);
        if (!f) {
          f = { key, color: m.nextColor++ % COLORS, down: {}, up: {}, order: m.subflows.size };
          m.subflows.set(key, f);
        }
        f.info = sf; f.closed = null;
        f.rateDown = rate(f.down, sf.bytes_sent, t);
        f.rateUp = rate(f.up, sf.bytes_received, t);
      }
      for (const f of m.subflows.values()) {
        if (present.has(f.key)) continue;
        if (f.closed === null) f.closed = t;
        f.rateDown = f.rateUp = 0;
        if (t - f.closed > KEEP_CLOSED_MS) m.subflows.delete(f.key);
      }
      m.rateDown = rate(m.down, s.bytes_to_client, t);
      m.rateUp = rate(m.up, s.bytes_to_server, t);
    }
    for (const m of mem.values()) {
      if (seen.has(m.id)) continue;
      if (m.ended === null) m.ended = t;
      m.rateDown = m.rateUp = 0;
      for (const f of m.subflows.values()) {
        if (f.closed === null) f.closed = t;
        f.rateDown = f.rateUp = 0;
      }
      if (t - m.ended > KEEP_ENDED_MS) {
        if (m.card) m.card.remove();
        mem.delete(m.id);
      }
    }
  }

  // Geometry, in the SVG's own units.
  const W = 1000, ROW = 58, TOP = 62;
  const CLIENT = [10, 175], CONV = [470, 600], SERVER = [830, 990];

  function subflowList(m) {
    return [...m.subflows.values()].sort((a, b) => a.order - b.order);
  }

  // signature changes when the drawing's shape must change.
  function signature(m) {
    return subflowList(m).map((f) => f.key + (f.closed !== null ? "x" : "") + (f.info.backup ? "b" : "")).join(",") +
      "|" + (m.info.upstream && m.info.upstream.remote ? "up" : "") + (m.ended !== null ? "|ended" : "");
  }

  function build(m) {
    const sfs = subflowList(m);
    const n = Math.max(1, sfs.length);
    const H = Math.max(140, TOP + (n - 1) * ROW + 52);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `session ${m.id}` });
    const refs = { svg, subflows: new Map() };
    const yc = TOP + (n - 1) * ROW / 2;
    const boxTop = 14, boxBottom = H - 10;
    // Nodes.
    el("rect", { class: "node client", x: CLIENT[0], y: boxTop, width: CLIENT[1] - CLIENT[0], height: boxBottom - boxTop }, svg);
    el("text", { class: "node-title", x: CLIENT[0] + 12, y: boxTop + 20 }, svg, "client");
    el("rect", { class: "node conv", x: CONV[0], y: boxTop, width: CONV[1] - CONV[0], height: boxBottom - boxTop }, svg);
    el("text", { class: "node-title", x: CONV[0] + 12, y: boxTop + 20 }, svg, "converter");
    el("rect", { class: "node server", x: SERVER[0], y: yc - 44, width: SERVER[1] - SERVER[0], height: 88 }, svg);
    el("text", { class: "node-title", x: SERVER[0] + 12, y: yc - 22 }, svg, "server");
    refs.dest = el("text", { class: "small mono", x: SERVER[0] + 12, y: yc - 2 }, svg, "");
    refs.upstream = el("text", { class: "small mono", x: SERVER[0] + 12, y: yc + 16 }, svg, "");
    refs.upstream2 = el("text", { class: "small mono", x: SERVER[0] + 12, y: yc + 31 }, svg, "");

    // Subflows: client port -> converter port, one row each; inside the
    // converter they merge into the server leg.
    sfs.forEach((f, i) => {
      const y = TOP + i * ROW;
      const x1 = CLIENT[1], x2 = CONV[0], xm = (x1 + x2) / 2;
      const d = `M${x1},${y} L${x2},${y}`;
      const closed = f.closed !== null;
      const cls = "subflow c" + f.color + (f.info.backup ? " backup" : "") + (closed ? " closed" : "");
      const r = {};
      el("path", { class: "merge", d: `M${x2},${y} C${x2 + 70},${y} ${CONV[1] - 70},${yc} ${CONV[1]},${yc}` }, svg);
      r.path = el("path", {
        class: cls, d, "data-session": m.id, "data-subflow": f.key,
        "data-state": closed ? "closed" : f.info.backup ? "backup" : "active",
      }, svg);
      r.flow = el("path", { class: "flow", d }, svg);
      el("circle", { class: "port c" + f.color + (closed ? " closed" : ""), cx: x1, cy: y, r: 5 }, svg);
      el("circle", { class: "port c" + f.color + (closed ? " closed" : ""), cx: x2, cy: y, r: 5 }, svg);
      el("text", { class: "small mono", x: x1 - 10, y: y + 4, "text-anchor": "end" }, svg, f.info.remote);
      el("text", { class: "small mono addr", x: x2 + 10, y: y - 8 }, svg, f.info.local);
      r.down = el("text", { class: "label", x: xm, y: y - 9, "text-anchor": "middle" }, svg, "");
      r.up = el("text", { class: "label small", x: xm, y: y + 19, "text-anchor": "middle" }, svg, "");
      refs.subflows.set(f.key, r);
    });

    // The server leg.
    const lx1 = CONV[1], lx2 = SERVER[0], lxm = (lx1 + lx2) / 2;
    const hasLeg = !!(m.info.upstream && m.info.upstream.remote);
    refs.leg = el("line", { class: "leg" + (hasLeg ? "" : " pending"), x1: lx1, y1: yc, x2: lx2, y2: yc, "data-session": m.id }, svg);
    refs.legFlow = el("line", { class: "flow", x1: lx1, y1: yc, x2: lx2, y2: yc }, svg);
    refs.legDown = el("text", { class: "label", x: lxm, y: yc - 10, "text-anchor": "middle" }, svg, "");
    refs.legUp = el("text", { class: "label small", x: lxm, y: yc + 22, "text-anchor": "middle" }, svg, "");
    return refs;
  }

  function widthFor(r, max) {
    return (3 + 9 * Math.min(1, max > 0 ? r / max : 0)).toFixed(1);
  }

  function update(m, refs) {
    const s = m.info;
    const sfs = subflowList(m);
    const max = Math.max(1, m.rateDown + m.rateUp, ...sfs.map((f) => f.rateDown + f.rateUp));
    for (const f of sfs) {
      const r = refs.subflows.get(f.key);
      const sf = f.info;
      const rt = f.rateDown + f.rateUp;
      r.path.setAttribute("stroke-width", f.closed !== null ? 2 : widthFor(rt, max));
      r.path.setAttribute("data-bytes", sf.bytes_sent + sf.bytes_received);
      r.flow.setAttribute("class", "flow" + (rt > 0 ? " moving" + (f.rateDown >= f.rateUp ? " rev" : "") : ""));
      label(r.down, "← ", sf.bytes_sent, f.rateDown);
      label(r.up, "→ ", sf.bytes_received, f.rateUp);
      if (sf.rtt_us) addTag(r.up, "rtt", "rtt " + (sf.rtt_us / 1000).toFixed(sf.rtt_us < 10000 ? 2 : 0) + " ms");
      if (f.closed !== null) addTag(r.up, "closed", "closed");
      else if (sf.backup) addTag(r.up, "backup", "backup");
    }
    const legRate = m.rateDown + m.rateUp;
    refs.leg.setAttribute("stroke-width", widthFor(legRate, max));
    refs.leg.setAttribute("data-bytes", s.bytes_to_client + s.bytes_to_server);
    refs.legFlow.setAttribute("class", "flow" + (legRate > 0 ? " moving" + (m.rateDown >= m.rateUp ? " rev" : "") : ""));
    label(refs.legDown, "← ", s.bytes_to_client, m.rateDown);
    label(refs.legUp, "→ ", s.bytes_to_server, m.rateUp);
    refs.dest.textContent = s.destination || "(not yet known)";
    const up = s.upstream || {};
    refs.upstream.textContent = up.local ? "from " + up.local : "";
    refs.upstream2.textContent = s.server_source ? "source: " + s.server_source : "";
  }

  // label writes "← 12.0 MiB" and, while bytes move, the rate.
  function label(text, arrow, bytes, bytesPerSec) {
    text.textContent = arrow + fmtBytes(bytes);
    if (bytesPerSec > 0) addTag(text, "rate", fmtRate(bytesPerSec));
  }

  function addTag(text, cls, s) {
    el("tspan", { class: "tagtext " + cls, dx: 10 }, text, s);
  }

  function head(m, now) {
    const s = m.info;
    const hd = m.headEl;
    hd.textContent = "";
    h("span", "id", "#" + s.id, hd);
    const state = m.ended !== null ? "ended" : s.state;
    h("span", "tag " + state, state, hd);
    if (s.fallback) h("span", "tag", "plain TCP (fallback)", hd);
    else if (s.token && s.token !== "00000000") h("span", "meta mono", "token " + s.token, hd);
    h("span", "meta", hostOf(s.client || "") + " → " + (s.destination || "?"), hd);
    const open = [...m.subflows.values()].filter((f) => f.closed === null).length;
    let sub = open + (open === 1 ? " subflow" : " subflows");
    const closed = s.mptcp ? s.mptcp.subflows_closed : 0;
    if (closed) sub += ", " + closed + " closed";
    h("span", "meta", sub, hd);
    h("span", "meta", "age " + fmtAge((m.ended !== null ? m.ended : now) - Date.parse(s.started)), hd);
    if (s.syn_ack_options) h("span", "meta", "SYN-ACK options " + s.syn_ack_options, hd);
  }

  function renderSessions(st) {
    const box = $("sessions");
    const list = [...mem.values()].sort((a, b) => b.id - a.id);
    let prev = null;
    for (const m of list) {
      if (!m.card) {
        m.card = h("div", "card");
        m.card.dataset.session = m.id;
        m.headEl = h("div", "card-head", undefined, m.card);
      }
      m.card.classList.toggle("ended", m.ended !== null);
      m.card.dataset.bytes = m.info.bytes_to_client + m.info.bytes_to_server;
      head(m, st.time);
      const sig = signature(m);
      if (sig !== m.sig) {
        const refs = build(m);
        if (m.refs) m.refs.svg.replaceWith(refs.svg); else m.card.appendChild(refs.svg);
        m.refs = refs; m.sig = sig;
      }
      update(m, m.refs);
      // Keep the cards in order, newest first, moving only what moved.
      const want = prev ? prev.nextSibling : box.firstChild;
      if (want !== m.card) box.insertBefore(m.card, want);
      prev = m.card;
    }
    const live = (st.sessions || []).length;
    $("no-sessions").classList.toggle("hidden", list.length > 0);
    $("shown").textContent = st.sessions_total > live ? `(newest ${live} of ${st.sessions_total})` : `(${live})`;
  }

  const LABELS = {
    active: "active sessions", accepted: "accepted", mptcp: "MPTCP clients", plain_tcp: "plain TCP clients",
    syn_data: "Convert in the SYN", converted: "converted", info_only: "Info answered",
    dial_failures: "server dial failures", resets: "resets", silent_aborts: "silent aborts",
    unverified: "unverified clients", syn_ack_capture_missed: "SYN-ACK not captured",
    transparent_ports: "transparent ports", transparent_ports_capped: "transparent ports capped",
  };
  const ORDER = Object.keys(LABELS);
  let prevCounters = {};

  function renderCounters(c) {
    const dl = $("counters");
    const rows = [];
    const keys = Object.keys(c || {}).filter((k) => k !== "refused");
    keys.sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
    for (const k of keys) {
      const v = c[k];
      if (v !== null && typeof v === "object") {
        for (const k2 of Object.keys(v).sort()) rows.push([k + "." + k2, k.replace(/_/g, " ") + ": " + k2, v[k2], false]);
      } else {
        rows.push([k, LABELS[k] || k.replace(/_/g, " "), v, false]);
      }
      if (k === "converted" || (k === keys[keys.length - 1] && !rows.some((r) => r[0] === "refused"))) {
        const refused = (c && c.refused) || {};
        const names = Object.keys(refused).sort();
        let total = 0;
        for (const n of names) total += refused[n];
        rows.push(["refused", "refused with an Error", total, false]);
        for (const n of names) rows.push(["refused." + n, n, refused[n], true]);
      }
    }
    dl.textContent = "";
    const next = {};
    for (const [key, label, value, sub] of rows) {
      h("dt", sub ? "sub" : "", label, dl);
      const dd = h("dd", "", typeof value === "number" ? value.toLocaleString("en-US") : String(value), dl);
      dd.dataset.counter = key;
      if (key in prevCounters && prevCounters[key] !== value) dd.className = "changed";
      next[key] = value;
    }
    prevCounters = next;
  }

  function renderRefusals(list, now) {
    const body = $("refusals").tBodies[0];
    body.textContent = "";
    for (const r of list || []) {
      const tr = h("tr", now - r.time < 5000 ? "fresh" : "", undefined, body);
      tr.dataset.code = r.code === undefined ? "" : r.code;
      h("td", "mono", clock(r.time), tr);
      h("td", "code", r.code === undefined ? "—" : String(r.code), tr);
      h("td", "err", r.error, tr);
      h("td", "", r.count > 1 ? "×" + r.count : "", tr);
      h("td", "mono", r.session ? "#" + r.session : "—", tr);
      h("td", "mono", r.destination || "—", tr);
    }
    $("no-refusals").classList.toggle("hidden", (list || []).length > 0);
    $("refusals").classList.toggle("hidden", (list || []).length === 0);
  }

  function setStatus(kind, text) {
    const s = $("status");
    s.dataset.status = kind;
    s.textContent = text;
  }

  async function poll() {
    try {
      // The server answers once a second has passed since the last state.
      const resp = await fetch("api/state?since=" + lastTime, { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const st = await resp.json();
      if (st.time >= lastTime) {
        lastTime = st.time;
        merge(st);
        renderSessions(st);
        renderCounters(st.counters);
        renderRefusals(st.refusals, st.time);
        setStatus("live", "live · " + clock(st.time));
      }
    } catch (e) {
      setStatus("down", "no answer from the converter (" + e.message + "), retrying");
      setTimeout(poll, POLL_MS);
      return;
    }
    setTimeout(poll, 100);
  }
  poll();
})();
