// The web console: an xterm.js terminal on a session of a VM, over the same
// WebSocket protocol as `fcm console` (internal/cli/attach.go): binary frames
// carry the terminal's bytes both ways; text frames are JSON controls (the
// daemon's hello and exit, the page's resize). A dropped connection
// reconnects with backoff and resumes where its output stopped; closing the
// tab leaves the session running.
(() => {
  "use strict";

  const vm = document.body.dataset.vm;
  const id = document.body.dataset.session;
  const statusEl = document.getElementById("status");
  const sessions = "/v1/vms/" + encodeURIComponent(vm) + "/sessions";

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontSize: 14,
    fontFamily: "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace",
    theme: { background: "#1e1e1e" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();
  window.fcmTerm = term; // for tests: term.buffer.active.getLine(i).translateToString()

  const encoder = new TextEncoder();
  let ws = null;
  let stream = "", offset = 0; // where our output stands in the daemon's stream
  let backoff = 500;
  let ended = false;

  function status(text, kind) {
    statusEl.textContent = text;
    statusEl.className = kind || "";
  }

  // A refusal that retrying will not change (signed out, no such VM).
  class Fatal extends Error {}

  async function apiError(resp) {
    let msg = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body.error) msg = body.error;
    } catch (_) { /* not JSON */ }
    if (resp.status === 401) return new Fatal("not signed in: sign in at " + location.origin + "/ (" + msg + ")");
    if (resp.status === 403 || resp.status === 404) return new Fatal(msg);
    return new Error(msg);
  }

  // ensureSession creates the session unless the VM already has it.
  async function ensureSession() {
    const list = await fetch(sessions, { headers: { Accept: "application/json" } });
    if (!list.ok) throw await apiError(list);
    const have = (await list.json()).sessions || [];
    if (have.some((s) => s.id === id)) return;
    const made = await fetch(sessions, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ id: id }),
    });
    if (!made.ok && made.status !== 409) throw await apiError(made); // 409: made meanwhile
  }

  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(data);
  }

  function control(msg) {
    send(JSON.stringify(msg));
  }

  async function connect() {
    if (ended) return;
    status(stream ? "reconnecting…" : "connecting…", stream ? "down" : "");
    try {
      await ensureSession();
    } catch (err) {
      return lost(err);
    }
    const q = new URLSearchParams({ cols: term.cols, rows: term.rows });
    if (stream) {
      q.set("stream", stream);
      q.set("since", offset);
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const sock = new WebSocket(scheme + "//" + location.host + sessions + "/" + encodeURIComponent(id) + "/attach?" + q);
    sock.binaryType = "arraybuffer";
    ws = sock;
    sock.onmessage = (ev) => {
      if (ev.data instanceof ArrayBuffer) {
        term.write(new Uint8Array(ev.data));
        offset += ev.data.byteLength;
        return;
      }
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (m.type === "hello") {
        stream = m.stream || "";
        offset = m.offset || 0;
        backoff = 500;
        status("connected");
        // The size may have changed while we were away.
        control({ type: "resize", cols: term.cols, rows: term.rows });
      } else if (m.type === "exit") {
        ended = true;
        term.write("\r\n[session " + id + " ended]\r\n");
        status("session ended: reload to start a new one", "ended");
      }
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (ended) return;
      lost(new Error(ev.reason || "connection closed (" + ev.code + ")"));
    };
  }

  // lost retries connect after a growing pause, unless err is Fatal.
  function lost(err) {
    if (err instanceof Fatal) {
      ended = true;
      status(err.message, "ended");
      return;
    }
    const wait = backoff;
    backoff = Math.min(2 * backoff, 8000);
    status("connection lost (" + err.message + "); reconnecting in " + (wait / 1000) + "s", "down");
    setTimeout(connect, wait);
  }

  term.onData((d) => send(encoder.encode(d)));
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0))));

  // The terminal follows the window; the session follows the terminal (at
  // most a resize every 100ms: the daemon limits control frames).
  let resizeTimer = 0;
  term.onResize(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => control({ type: "resize", cols: term.cols, rows: term.rows }), 100);
  });
  let fitQueued = false;
  new ResizeObserver(() => {
    if (fitQueued) return;
    fitQueued = true;
    requestAnimationFrame(() => {
      fitQueued = false;
      fit.fit();
    });
  }).observe(document.getElementById("terminal"));

  connect();
})();
