// The status page's script: it keeps the VMs' states current (polling the
// JSON API every 2 s), runs the actions, and on a VM's page shows its
// sessions and follows its logs. Same-origin fetch carries the session
// cookie; the daemon refuses the same requests from other sites.
"use strict";

const POLL_MS = 2000;
const SESSIONS_MS = 10000;
const LOG_LINES_KEPT = 500;

function $(sel, root) { return (root || document).querySelector(sel); }
function $all(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }

let flashTimer = 0;

// flash shows a message at the top of the page; news goes after a while,
// errors stay until the next message.
function flash(msg, isError) {
  const el = $("#flash");
  if (!el) return;
  el.textContent = msg;
  el.classList.toggle("error", !!isError);
  el.hidden = !msg;
  clearTimeout(flashTimer);
  if (msg && !isError) flashTimer = setTimeout(() => { el.hidden = true; }, 8000);
}

// api calls the JSON API; it resolves to the decoded body (null for 204)
// and rejects with the daemon's error message.
async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    // The session ended (signed out elsewhere, expired): show the sign-in view.
    location.assign("/");
    throw new Error("signed out");
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || (resp.status + " " + resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function vmPath(name) { return "/v1/vms/" + encodeURIComponent(name); }

function sizeText(vm) {
  if (!vm.cpus) return "";
  const mem = vm.memory_mib >= 1024 && vm.memory_mib % 1024 === 0 ? (vm.memory_mib / 1024) + "G" : vm.memory_mib + "M";
  const gib = vm.disk_bytes / (1 << 30);
  const disk = gib >= 1 ? (Number.isInteger(gib) ? gib : gib.toFixed(1)) + "G" : Math.round(vm.disk_bytes / (1 << 20)) + "M";
  return vm.cpus + " CPU, " + mem + " RAM, " + disk + " disk";
}

// reasonText is why a VM is in its state, and since when it sleeps.
function reasonText(vm) {
  let why = vm.reason || "";
  if (vm.state === "suspended" && vm.suspended_at) {
    const at = new Date(vm.suspended_at).toISOString().slice(0, 16).replace("T", " ") + " UTC";
    why = (why ? why + ", " : "") + "since " + at;
  }
  return why;
}

function setState(root, state, reason) {
  const el = $('[data-field="state"]', root);
  if (el && el.textContent !== state) {
    el.textContent = state;
    el.className = "state state-" + state;
  }
  // Why it is in this state (restarting, crashed, paused, ...), when it says.
  const why = $('[data-field="reason"]', root);
  if (why && why.textContent !== (reason || "")) why.textContent = reason || "";
  // Only what the state allows is offered.
  const down = ["stopped", "error", "crashed", "restarting", "suspended"];
  const allowed = {
    start: down.includes(state),
    stop: state !== "stopped",
    restart: state === "running",
    destroy: true,
  };
  for (const b of $all("button[data-action]", root)) {
    if (!b.dataset.busy) b.disabled = !allowed[b.dataset.action];
  }
}

function setURL(el, url) {
  if (!el) return;
  const cur = $("a", el);
  if ((cur ? cur.href : "") === url || (!cur && !url)) return;
  el.textContent = "";
  if (url) {
    const a = document.createElement("a");
    a.href = url;
    a.rel = "noopener";
    a.textContent = url;
    el.append(a);
  }
}

function releaseText(el, rel) {
  el.textContent = "";
  if (!rel) {
    const s = document.createElement("span");
    s.className = "muted";
    s.textContent = "none";
    el.append(s);
    return;
  }
  el.append("v" + rel.version + " ");
  if (rel.commit) {
    const c = document.createElement("code");
    c.textContent = rel.commit.slice(0, 7);
    el.append(c, " ");
  }
  const t = document.createElement("time");
  t.dateTime = rel.created_at;
  t.textContent = new Date(rel.created_at).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  el.append(t);
}

// runAction does what a button says to the VM it belongs to.
async function runAction(button) {
  const root = button.closest("[data-vm]");
  const name = root.dataset.vm;
  const action = button.dataset.action;
  if (action === "destroy") {
    const typed = window.prompt("Destroying " + name + " deletes its disk and everything on it.\nType the VM's name to destroy it:");
    if (typed === null) return;
    if (typed.trim() !== name) {
      flash("Not destroyed: the name typed (" + JSON.stringify(typed) + ") is not " + name + ".", true);
      return;
    }
  }
  button.dataset.busy = "1";
  button.disabled = true;
  flash(action + ": " + name + "…");
  try {
    if (action === "destroy") {
      await api("DELETE", vmPath(name));
      flash(name + " destroyed.");
      if ($("#vm")) { location.assign("/"); return; }
      root.remove();
    } else {
      const res = await api("POST", vmPath(name) + "/" + action);
      flash(action === "restart" ? name + ": the app restarted." : name + " is " + (res && res.state ? res.state : "done") + ".");
    }
  } catch (err) {
    flash(action + " " + name + ": " + err.message, true);
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
    refresh();
  }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (b) {
    ev.preventDefault();
    runAction(b);
  }
});

// ---- the list of VMs (/) ----

function rowFor(tbody, vm, admin) {
  let row = $all("tr[data-vm]", tbody).find((r) => r.dataset.vm === vm.name);
  if (row) return row;
  row = $("#row-template").content.firstElementChild.cloneNode(true);
  row.dataset.vm = vm.name;
  const link = $('[data-field="link"]', row);
  link.href = "/vms/" + encodeURIComponent(vm.name);
  link.textContent = vm.name;
  $('[data-field="console"]', row).href = "/vms/" + encodeURIComponent(vm.name) + "/console";
  tbody.append(row);
  api("GET", vmPath(vm.name) + "/releases")
    .then((r) => releaseText($('[data-field="release"]', row), r.releases[0]))
    .catch(() => {});
  return row;
}

async function refreshList() {
  const table = $("#vms");
  const data = await api("GET", "/v1/vms");
  const tbody = $("tbody", table);
  const seen = new Set();
  for (const vm of data.vms) {
    seen.add(vm.name);
    const row = rowFor(tbody, vm);
    setState(row, vm.state, reasonText(vm));
    setURL($('[data-field="url"]', row), vm.url || "");
    const size = $('[data-field="size"]', row);
    const st = sizeText(vm);
    if (size.textContent !== st) size.textContent = st;
    const owner = $('[data-field="owner"]', row);
    if (owner && owner.textContent !== (vm.owner || "")) owner.textContent = vm.owner || "";
  }
  for (const row of $all("tr[data-vm]", tbody)) {
    if (!seen.has(row.dataset.vm)) row.remove();
  }
  $("#no-vms").hidden = data.vms.length > 0;
}

function sessionLinks(el, vm, sessions) {
  el.textContent = "";
  if (!sessions.length) {
    el.append("0");
    return;
  }
  el.append(sessions.length + ": ");
  sessions.forEach((s, i) => {
    if (i) el.append(", ");
    const a = document.createElement("a");
    a.href = "/vms/" + encodeURIComponent(vm) + "/console?session=" + encodeURIComponent(s.id);
    a.textContent = s.id;
    el.append(a);
  });
}

async function refreshSessions() {
  const data = await api("GET", "/v1/sessions");
  const byVM = {};
  for (const s of data.sessions) (byVM[s.vm] = byVM[s.vm] || []).push(s);
  for (const row of $all("#vms tr[data-vm]")) {
    const el = $('[data-field="sessions"]', row);
    const state = $('[data-field="state"]', row).textContent;
    if (state !== "running") {
      el.textContent = "–";
      continue;
    }
    sessionLinks(el, row.dataset.vm, byVM[row.dataset.vm] || []);
  }
}

async function createVM(form) {
  const out = $("#create-progress");
  const name = form.elements.name.value.trim();
  const button = $("button", form);
  button.disabled = true;
  out.hidden = false;
  out.textContent = "Creating " + (name || "a VM") + "…\n";
  try {
    const resp = await fetch("/v1/vms", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
      body: JSON.stringify(name ? { name } : {}),
    });
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      throw new Error(data.error || resp.status + " " + resp.statusText);
    }
    await readLines(resp, (line) => {
      if (!line) return;
      let ev;
      try { ev = JSON.parse(line); } catch (e) { return; }
      if (ev.error) throw new Error(ev.error.error);
      if (ev.vm) out.textContent += ev.vm.name + " is " + ev.vm.state + (ev.vm.url ? " at " + ev.vm.url : "") + ".\n";
      else if (ev.message) out.textContent += (ev.step ? ev.step + ": " : "") + ev.message + "\n";
    });
    form.reset();
  } catch (err) {
    out.textContent += "Failed: " + err.message + "\n";
  } finally {
    button.disabled = false;
    refresh();
  }
}

// readLines calls fn with each line of a streamed response body.
async function readLines(resp, fn) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      fn(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  }
  if (buf) fn(buf);
}

// ---- one VM's page (/vms/{name}) ----

async function refreshVM() {
  const root = $("#vm");
  let vm;
  try {
    vm = await api("GET", vmPath(root.dataset.vm));
  } catch (err) {
    if (err.status === 404) {
      setState(root, "destroyed");
      return;
    }
    throw err;
  }
  setState(root, vm.state, reasonText(vm));
  const url = $('[data-field="url"]', root);
  if (vm.url) setURL(url, vm.url);
  if (vm.state === "running" && !logsFollowing) followLogs(root.dataset.vm);
  const logs = $("#logs");
  if (vm.state !== "running" && !logsFollowing && !logs.textContent) logs.textContent = "(the VM is not running: its logs show when it runs)\n";
}

async function refreshVMSessions() {
  const root = $("#vm");
  const list = $("#sessions");
  const item = (text, href) => {
    const li = document.createElement("li");
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      li.append(a);
    } else {
      li.className = "muted";
      li.textContent = text;
    }
    return li;
  };
  if ($('[data-field="state"]', root).textContent !== "running") {
    list.replaceChildren(item("The VM is not running."));
    return;
  }
  try {
    const data = await api("GET", vmPath(root.dataset.vm) + "/sessions");
    const base = "/vms/" + encodeURIComponent(root.dataset.vm) + "/console?session=";
    list.replaceChildren(...data.sessions.map((s) => {
      const li = item(s.id, base + encodeURIComponent(s.id));
      li.append(" (" + s.attached + " attached)");
      return li;
    }));
    if (!data.sessions.length) list.replaceChildren(item("No sessions: the Console button starts one."));
  } catch (err) {
    list.replaceChildren(item("Sessions: " + err.message));
  }
}

let logsFollowing = false;

// followLogs streams the app's log into #logs while the VM runs.
async function followLogs(name) {
  const pre = $("#logs");
  logsFollowing = true;
  try {
    const resp = await fetch(vmPath(name) + "/logs?lines=" + (pre.dataset.lines || 100) + "&follow=1", { credentials: "same-origin" });
    if (!resp.ok) {
      const data = await resp.json().catch(() => ({}));
      throw new Error(data.error || resp.status + " " + resp.statusText);
    }
    pre.textContent = "";
    await readLines(resp, (line) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(line + "\n");
      while (pre.childNodes.length > LOG_LINES_KEPT) pre.firstChild.remove();
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
  } catch (err) {
    pre.append("(logs: " + err.message + ")\n");
  } finally {
    // Try again at the next poll in which the VM runs (after a restart).
    setTimeout(() => { logsFollowing = false; }, 5000);
  }
}

// ---- polling ----

let refreshing = false;

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    if ($("#vms")) await refreshList();
    if ($("#vm")) await refreshVM();
  } catch (err) {
    if (err.message !== "signed out") flash("Cannot reach the daemon: " + err.message, true);
  } finally {
    refreshing = false;
  }
}

function every(ms, fn) {
  const run = () => fn().catch(() => {}).finally(() => setTimeout(run, ms));
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  const form = $("#create");
  if (form) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      createVM(form);
    });
  }
  if ($("#vms")) {
    every(POLL_MS, refresh);
    every(SESSIONS_MS, refreshSessions);
  }
  if ($("#vm")) {
    every(POLL_MS, refresh);
    every(SESSIONS_MS, refreshVMSessions);
  }
});
