(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-refresh");
  var every = parseInt(body.getAttribute("data-poll"), 10) || 2000;
  var t0 = performance.now();
  var base = parseTime(body.getAttribute("data-now"));
  if (isNaN(base)) { base = Date.now(); }
  var PREVIEW = __PREVIEW__, RECENT = __RECENT__;

  function now() { return base + (performance.now() - t0); }
  function parseTime(s) {
    if (!s) { return NaN; }
    if (!/(Z|[+-]\d\d:?\d\d)$/i.test(s)) { s += "Z"; }
    return Date.parse(s);
  }
  function span(sec) {
    var s = Math.floor(Math.abs(sec));
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h"; }
    var d = Math.floor(s / 86400);
    return d === 1 ? "1 day" : d + " days";
  }
  function relative(ms, future) {
    var delta = (ms - now()) / 1000;
    if (future && delta <= 0) { return "due now"; }
    if (Math.abs(delta) < 5) { return "just now"; }
    return delta > 0 ? "in " + span(delta) : span(delta) + " ago";
  }
  function absolute(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], size = Number(n) || 0;
    for (var i = 0; i < units.length; i++) {
      if (size < 1024 || i === units.length - 1) {
        return i === 0 ? Math.round(size) + " B" : size.toFixed(1) + " " + units[i];
      }
      size /= 1024;
    }
  }
  function duration(sec) {
    if (sec < 10) { return sec.toFixed(1) + " s"; }
    var s = Math.round(sec);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }
  function preview(text, limit) {
    var flat = String(text || "").split(/\s+/).filter(Boolean).join(" ");
    return flat.length <= limit ? flat : flat.slice(0, limit - 1).replace(/\s+$/, "") + "\u2026";
  }
  function tone(status) {
    if (status === "ok" || status === "succeeded" || status === "done") { return "ok"; }
    if (status === "partial" || status === "running") { return "warn"; }
    if (status === "failed" || status === "interrupted") { return "bad"; }
    return "idle";
  }
  function setTone(el, t) {
    el.className = el.className.replace(/\btone-\w+/g, "").trim() + " tone-" + t;
  }
  function setText(el, text) { if (el && el.textContent !== text) { el.textContent = text; } }
  function q(root, sel) { return root.querySelector(sel); }

  function setTime(el, iso) {
    if (!el) { return; }
    var ms = parseTime(iso);
    if (isNaN(ms)) {
      el.removeAttribute("datetime"); el.removeAttribute("title"); el.classList.add("none");
      setText(el, el.getAttribute("data-empty") || "");
      return;
    }
    el.classList.remove("none");
    el.setAttribute("datetime", new Date(ms).toISOString());
    el.setAttribute("title", absolute(ms));
    setText(el, relative(ms, el.getAttribute("data-rel") === "future"));
  }
  function refreshTimes() {
    document.querySelectorAll("time[data-rel][datetime]").forEach(function (el) {
      var ms = parseTime(el.getAttribute("datetime"));
      if (!isNaN(ms)) { setText(el, relative(ms, el.getAttribute("data-rel") === "future")); }
    });
    setText(document.getElementById("clock"), absolute(now()));
  }

  function jobLabel(job) {
    var req = job.request || {};
    if (typeof req.mirror === "string") { return "mirror " + req.mirror; }
    var list = req.mirrors;
    if (Array.isArray(list) && list.length && list[0] && typeof list[0] === "object") {
      var first = (list[0].src || "?") + " \u2192 " + (list[0].dst || "?");
      return list.length === 1 ? first : first + " +" + (list.length - 1) + " more";
    }
    var entries = job.entries || [];
    if (entries.length) {
      return entries.length === 1 ? entries[0].name : entries[0].name + " +" + (entries.length - 1) + " more";
    }
    return "";
  }
  function inFlight(job) {
    var names = (job.entries || []).filter(function (e) { return e.status === "running"; })
      .map(function (e) { return e.name; });
    if (!names.length) { return ""; }
    return "copying " + names.slice(0, 3).join(", ") + (names.length > 3 ? " +" + (names.length - 3) + " more" : "");
  }
  function fromTemplate(id) {
    var tpl = document.getElementById(id);
    return tpl.content.firstElementChild.cloneNode(true);
  }
  function fillCommon(el, job) {
    var p = job.progress || {}, done = p.done || 0, total = p.total || 0;
    el.setAttribute("data-job", job.id);
    el.setAttribute("data-state", job.state);
    setTone(el, tone(job.state));
    setText(q(el, "[data-field=state]"), job.state);
    var idEl = q(el, ".job-id");
    setText(idEl, String(job.id).slice(0, 12)); idEl.setAttribute("title", job.id);
    setText(q(el, ".job-count"), done + "/" + total);
    setText(q(el, ".job-bytes"), human(p.bytes || 0));
    return total > 0 ? Math.max(0, Math.min(100, done * 100 / total)) : 0;
  }
  function fillRunning(el, job) {
    var pct = fillCommon(el, job), p = job.progress || {};
    var label = q(el, ".job-label"), text = jobLabel(job);
    setText(label, text); label.setAttribute("title", text);
    var bar = q(el, ".progress");
    bar.setAttribute("aria-valuemax", String(p.total || 0));
    bar.setAttribute("aria-valuenow", String(p.done || 0));
    bar.setAttribute("aria-label", "Progress of job " + job.id);
    q(el, ".progress-fill").style.width = pct.toFixed(1) + "%";
    setText(q(el, ".job-pct"), Math.round(pct) + "%");
    var nowEl = q(el, ".job-now"), flight = inFlight(job);
    setText(nowEl, flight); nowEl.hidden = !flight;
    var started = q(el, ".job-started time");
    if (!started) {
      started = document.createElement("time");
      started.setAttribute("data-rel", "past");
      q(el, ".job-started").appendChild(started);
    }
    setTime(started, job.started_at || job.created_at);
  }
  function fillRecent(el, job) {
    fillCommon(el, job);
    var what = q(el, ".what"), text = jobLabel(job);
    setText(what, text); what.setAttribute("title", text);
    var a = parseTime(job.started_at), b = parseTime(job.finished_at);
    setText(q(el, ".job-took"), isNaN(a) || isNaN(b) ? "" : duration((b - a) / 1000));
    var cell = q(el, ".job-finished"), t = q(cell, "time");
    if (!t) { t = document.createElement("time"); t.setAttribute("data-rel", "past"); cell.appendChild(t); }
    setTime(t, job.finished_at || job.started_at || job.created_at);
    var errs = job.errors || [], err = errs.length ? String(errs[0].error) : "";
    var errEl = q(el, ".job-error");
    setText(errEl, preview(err, 90) + (errs.length > 1 ? " (+" + (errs.length - 1) + ")" : ""));
    errEl.setAttribute("title", err);
  }
  function byJob(container) {
    var map = {};
    Array.prototype.forEach.call(container.children, function (el) {
      map[el.getAttribute("data-job")] = el;
    });
    return map;
  }
  function applyJobs(jobs) {
    var list = document.getElementById("running-jobs");
    var table = document.getElementById("recent-jobs");
    var rows = byJob(list), recent = byJob(table), seen = {}, anchor = table.firstElementChild;
    jobs.forEach(function (job) {
      if (!job || job.id === undefined) { return; }
      var active = job.state === "running" || job.state === "queued";
      var row = rows[job.id];
      if (active) {
        seen[job.id] = true;
        if (!row) { row = fromTemplate("tpl-job"); list.appendChild(row); }
        fillRunning(row, job);
      } else {
        var r = recent[job.id];
        if (!r) {
          r = fromTemplate("tpl-recent");
          table.insertBefore(r, anchor);
          recent[job.id] = r;
        }
        fillRecent(r, job);
      }
    });
    Object.keys(rows).forEach(function (id) {
      var row = rows[id];
      if (!seen[id] && !row.classList.contains("leaving")) {
        row.classList.add("leaving");
        setTimeout(function () { if (row.parentNode) { row.parentNode.removeChild(row); } sync(); }, 400);
      }
    });
    while (table.children.length > RECENT) { table.removeChild(table.lastElementChild); }
    var running = jobs.filter(function (j) { return j && j.state === "running"; }).length;
    setCount("running", running);
    sync();
  }
  function sync() {
    var list = document.getElementById("running-jobs");
    var live = Array.prototype.filter.call(list.children, function (el) { return !el.classList.contains("leaving"); });
    document.getElementById("no-running").hidden = live.length > 0;
    var any = document.getElementById("recent-jobs").children.length > 0;
    document.getElementById("no-recent").hidden = any;
    document.getElementById("recent-wrap").hidden = !any;
  }
  function setCount(name, n) {
    var el = q(document, "[data-count=" + name + "]");
    if (!el) { return; }
    setText(el, String(n));
    if (name !== "mirrors" && name !== "ok") { el.parentNode.classList.toggle("zero", n === 0); }
  }
  function applyMirrors(mirrors) {
    var cards = {};
    document.querySelectorAll("article[data-mirror]").forEach(function (el) {
      cards[el.getAttribute("data-mirror")] = el;
    });
    var ok = 0, warn = 0, bad = 0;
    mirrors.forEach(function (m) {
      if (!m) { return; }
      var t = m.running ? "warn" : tone(m.last_status);
      var status = m.running ? "running" : (m.last_status || "never run");
      if (t === "ok") { ok++; } else if (t === "bad") { bad++; } else if (t === "warn" && !m.running) { warn++; }
      var card = cards[m.name];
      if (!card) { return; }
      setTone(card, t);
      card.classList.toggle("is-running", !!m.running);
      card.setAttribute("data-status", status);
      card.setAttribute("data-tone", t);
      setText(q(card, "[data-field=status]"), status);
      setTime(q(card, "[data-field=last_run] time"), m.last_run);
      setTime(q(card, "[data-field=next_run] time"), m.next_run);
      setTime(q(card, "[data-field=last_success] time"), m.last_success);
      var err = q(card, "[data-field=last_error]"), text = m.last_error ? String(m.last_error) : "";
      setText(q(err, ".error-text"), preview(text, PREVIEW));
      err.setAttribute("title", text);
      err.hidden = !text;
    });
    setCount("mirrors", mirrors.length);
    setCount("ok", ok); setCount("warn", warn); setCount("failing", bad);
    var overall = !mirrors.length ? "idle" : bad ? "bad" : warn ? "warn" : "ok";
    var colours = {ok: "%231f9d55", warn: "%23d48806", bad: "%23d83a34", idle: "%239aa3ae"};
    var icon = document.getElementById("favicon");
    if (icon) {
      icon.setAttribute("href", "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E" +
        "%3Ccircle cx='8' cy='8' r='7' fill='" + colours[overall] + "'/%3E%3C/svg%3E");
    }
  }

  function applyWorkers(w) {
    var rows = document.getElementById("worker-rows");
    var queues = document.getElementById("queue-rows");
    if (!rows || !queues || !w || typeof w !== "object") { return; }
    var workers = Array.isArray(w.workers) ? w.workers : [];
    rows.textContent = "";
    workers.forEach(function (x) {
      var el = fromTemplate("tpl-worker");
      var busy = Number(x.busy) || 0;
      var state = x.alive ? (busy ? "busy" : "idle") : "gone";
      el.setAttribute("data-worker", String(x.name || ""));
      setTone(el, state === "busy" ? "warn" : state === "idle" ? "ok" : "bad");
      setText(q(el, "[data-field=state]"), state);
      setText(q(el, ".worker-name"), String(x.name || ""));
      setText(q(el, ".worker-busy"), String(busy));
      setText(q(el, ".worker-done"), String(Number(x.done) || 0));
      setText(q(el, ".worker-failed"), String(Number(x.failed) || 0));
      setTime(q(el, ".worker-beat time"), x.last_heartbeat);
      rows.appendChild(el);
    });
    document.getElementById("no-workers").hidden = workers.length > 0;
    queues.textContent = "";
    (Array.isArray(w.queues) ? w.queues : []).forEach(function (x) {
      var el = fromTemplate("tpl-queue");
      el.setAttribute("data-queue", String(x.registry || ""));
      setText(q(el, ".queue-registry"), String(x.registry || ""));
      setText(q(el, ".queue-todo"), String(Number(x.todo) || 0));
      setText(q(el, ".queue-doing"), String(Number(x.doing) || 0));
      queues.appendChild(el);
    });
  }

  function online(isOnline) {
    document.getElementById("conn").hidden = isOnline;
    body.classList.toggle("offline", !isOnline);
  }
  function poll() {
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, Math.max(every * 2, 4000)) : 0;
    fetch(url, {cache: "no-store", headers: {Accept: "application/json"}, signal: ctl ? ctl.signal : undefined})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) {
        if (!data || typeof data !== "object") { throw new Error("bad payload"); }
        if (Array.isArray(data.mirrors)) { applyMirrors(data.mirrors); }
        if (Array.isArray(data.jobs)) { applyJobs(data.jobs); }
        if (data.workers) { applyWorkers(data.workers); }
        online(true);
        setText(document.getElementById("updated"), "updated " + absolute(now()).slice(11));
      })
      .catch(function () { online(false); })
      .then(function () {
        clearTimeout(timer);
        refreshTimes();
        setTimeout(poll, every);
      });
  }

  if (url && typeof fetch === "function") {
    setTimeout(poll, every);
  } else {
    setInterval(refreshTimes, 15000);
  }
})();
