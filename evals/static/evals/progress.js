// Live progress of eval runs over /ws/evals/ (evals/consumers.py). Every element with data-run="ID"
// is updated in place: its bar, counts, note and status; the cancel button goes once the run ends.
// A page whose run was unfinished when drawn (data-reload-on-finish) reloads to show the results.
(function () {
  const shown = () => Array.from(document.querySelectorAll("[data-run]"));

  function set(root, field, text) {
    for (const el of root.querySelectorAll('[data-field="' + field + '"]')) el.textContent = text;
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
        badge.textContent = message.status;
        badge.className = "status " + message.status;
      }
      if (message.finished) {
        for (const form of root.querySelectorAll('[data-field="cancel"]')) form.remove();
        if (root.hasAttribute("data-reload-on-finish")) {
          root.removeAttribute("data-reload-on-finish");
          setTimeout(() => location.reload(), 500);
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
