// Live progress of eval runs over /ws/evals/ (evals/consumers.py). Every element with data-run="ID"
// is updated in place: its bar, counts, note, status and gate; the cancel button goes once the run ends.
// A run's own page (data-redraw-on-finish) then fetches itself and swaps in the finished run's
// sections (summary, results, harness errors, charts) in place: the page is never reloaded.
(function () {
  const shown = () => Array.from(document.querySelectorAll("[data-run]"));

  function set(root, field, text) {
    for (const el of root.querySelectorAll('[data-field="' + field + '"]')) el.textContent = text;
  }

  async function redraw(root) {
    // The finished run's page as the server draws it now; only this run's part of it is swapped in.
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok) return;
    const drawn = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = drawn.querySelector('[data-run="' + root.dataset.run + '"]');
    if (!fresh) return;
    root.innerHTML = fresh.innerHTML;
    root.dataset.status = fresh.dataset.status;
    document.body.dataset.redrawn = root.dataset.status;
  }

  function show(message) {
    if (message.type !== "progress") return;
    const targets = document.querySelectorAll('[data-run="' + message.run + '"]');
    if (!targets.length) {
      const notice = document.getElementById("new-runs");
      if (notice) notice.hidden = false;
      return;
    }
    for (const root of targets) {
      root.dataset.status = message.status;
      for (const bar of root.querySelectorAll('[data-field="bar"]')) {
        bar.setAttribute("aria-valuenow", String(message.percent));
        const fill = bar.querySelector(".fill");
        fill.style.width = message.percent + "%";
        fill.className = "fill " + message.status;
      }
      set(root, "count", message.done + "/" + message.total);
      set(root, "note", message.finished ? "" : message.note);
      for (const badge of root.querySelectorAll('[data-field="status"]')) {
        badge.textContent = message.status_label || message.status;
        badge.className = "status " + message.status;
      }
      for (const gate of root.querySelectorAll('[data-field="gate"]')) {
        // A failed gate is the status itself (gate_failed); a passed one is said beside "succeeded".
        gate.textContent = message.gate === "passed" ? "gate passed" : "";
        gate.className = message.gate === "passed" ? "gate passed" : "gate";
      }
      if (message.finished) {
        for (const form of root.querySelectorAll('[data-field="cancel"]')) form.remove();
        if (root.hasAttribute("data-redraw-on-finish")) {
          root.removeAttribute("data-redraw-on-finish");
          redraw(root);
        }
      }
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws/evals/");
    socket.onopen = () => {
      document.body.dataset.live = "connected";
      // What was published before this socket opened is asked for, not lost.
      const runs = [...new Set(shown().map((el) => Number(el.dataset.run)))];
      socket.send(JSON.stringify({ type: "watch", runs: runs }));
    };
    socket.onmessage = (event) => show(JSON.parse(event.data));
    socket.onclose = () => {
      document.body.dataset.live = "disconnected";
      setTimeout(connect, 3000);
    };
  }

  connect();
})();
