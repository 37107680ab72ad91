// The models board: rows drawn from the page's JSON, then kept live by /ws/models/ (pushed by the server the
// moment a state changes, and every 2 s for the counts). Load and Unload post to the console with the CSRF token.
(function () {
  "use strict";
  const body = () => document.querySelector("#board tbody");
  const csrf = () => document.querySelector("[name=csrfmiddlewaretoken]").value;
  const live = () => document.getElementById("board-live");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value; else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // replaceChildren with the nulls dropped (it would write "null" for each).
  function put(node, ...children) { node.replaceChildren(...children.filter((child) => child)); }

  function say(text, kind, undo) {
    const box = document.getElementById("board-message");
    put(box);
    const line = el("li", {class: kind || "", text: text});
    if (undo) {
      const button = el("button", {type: "button", class: "link", text: undo.label});
      button.addEventListener("click", undo.run);
      line.append(" ", button);
    }
    box.append(line);
  }

  function spark(values, label, unit) {
    const width = 120, height = 28, known = values.map((v) => (v === null ? null : Number(v)));
    const top = Math.max(1, ...known.filter((v) => v !== null));
    const step = width / Math.max(1, values.length - 1);
    const points = known.map((v, i) => (v === null ? null : `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const last = [...known].reverse().find((v) => v !== null);
    svg.setAttribute("aria-label", `${label}: ${last === undefined ? "none" : last + unit} in the last minute`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.filter(Boolean).join(" "));
    svg.append(line);
    const wrap = el("span", {class: "spark-wrap"}, svg, el("span", {class: "spark-last", text: last === undefined ? "–" : `${last}${unit}`}));
    return wrap;
  }

  async function act(model, verb, overrides) {
    const response = await fetch(`/console/models/${encodeURIComponent(model.id)}/${verb}`, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRFToken": csrf(), "Content-Type": "application/json"},
      body: JSON.stringify(verb === "load" ? {overrides: overrides || {}} : {}),
    });
    const answer = await response.json().catch(() => ({}));
    return {ok: response.ok, status: response.status, answer: answer};
  }

  async function unload(model) {
    if (model.last_replica && !window.confirm(
        `Unload ${model.id}? It is the last loaded serve of model ${model.model}: its requests get ` +
        `503 model_not_loaded until it is loaded again. Undo: Load.`)) return;
    const done = await act(model, "unload");
    if (!done.ok) { say(done.answer.error ? done.answer.error.message : `Unload refused (${done.status}).`, "error"); return; }
    say(`Unloading ${model.id}: it drains, then stops.`, "success", {label: `Undo: load ${model.id}`, run: () => load(model, {})});
  }

  async function load(model, overrides, form) {
    if (form) form.querySelectorAll(".field-error").forEach((node) => node.remove());
    const done = await act(model, "load", overrides);
    if (!done.ok) {
      const error = done.answer.error || {message: `Load refused (${done.status}).`};
      const input = form && error.field ? form.querySelector(`[name="${CSS.escape(error.field)}"]`) : null;
      if (input) input.closest("label").append(el("span", {class: "field-error", role: "alert", text: error.message}));
      say(error.field ? `${error.field}: ${error.message}` : error.message, "error");
      return;
    }
    say(done.status === 200 ? `${model.id} is already loaded.` : `Loading ${model.id}…`, "success");
  }

  function overridesForm(model) {
    // novalidate: the server checks the constraints and its message shows inline (one rule, one wording).
    const form = el("form", {class: "overrides", novalidate: true, "aria-label": `Load ${model.id} with overrides`});
    const constraints = model.load_constraints || {};
    const names = Object.keys(constraints);
    if (!names.length) form.append(el("p", {class: "muted", text: "This serve allows no overrides at load (load_constraints is empty)."}));
    for (const name of names) {
      const rule = constraints[name];
      const label = el("label", {}, el("span", {text: name}));
      let input;
      if (rule.choices) {
        input = el("select", {name: name});
        input.append(el("option", {value: "", text: "(as configured)"}));
        for (const choice of rule.choices) input.append(el("option", {value: JSON.stringify(choice), text: String(choice)}));
      } else if (rule.allow) {
        input = el("input", {name: name, type: "text", placeholder: rule.allow.join(" "), "data-kind": "list"});
      } else {
        input = el("input", {name: name, type: "number", min: rule.min, max: rule.max, step: "any", placeholder: `${rule.min ?? ""}–${rule.max ?? ""}`});
      }
      label.append(input, el("small", {class: "muted", text: JSON.stringify(rule)}));
      form.append(label);
    }
    form.append(el("button", {type: "submit", text: `Load ${model.id} with these`}));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const overrides = {};
      for (const input of form.querySelectorAll("input, select")) {
        if (input.value === "") continue;
        if (input.tagName === "SELECT") overrides[input.name] = JSON.parse(input.value);
        else if (input.dataset.kind === "list") overrides[input.name] = input.value.split(/\s+/).filter(Boolean);
        else overrides[input.name] = Number(input.value);
      }
      load(current[model.id] || model, overrides, form);
    });
    return form;
  }

  const current = {};

  function rowFor(model) {
    let row = body().querySelector(`tr.serve[data-serve="${CSS.escape(model.id)}"]`);
    if (row) return row;
    row = el("tr", {class: "serve", "data-serve": model.id});
    for (const field of ["name", "state", "runs", "gpu", "inflight", "queued", "rpm", "ttft", "actions"]) row.append(el("td", {"data-field": field}));
    const actions = row.querySelector('[data-field="actions"]');
    const loadButton = el("button", {type: "button", "data-action": "load", "aria-label": `Load ${model.id}`, text: "Load"});
    const unloadButton = el("button", {type: "button", "data-action": "unload", "aria-label": `Unload ${model.id}`, text: "Unload"});
    const more = el("button", {type: "button", class: "link", "aria-expanded": "false", "aria-controls": `detail-${model.id}`, text: "Details"});
    loadButton.addEventListener("click", () => load(current[model.id], {}));
    unloadButton.addEventListener("click", () => unload(current[model.id]));
    actions.append(loadButton, unloadButton, more);
    const detail = el("tr", {class: "detail", id: `detail-${model.id}`, hidden: true});
    const cell = el("td", {colspan: "9"});
    cell.append(el("div", {class: "detail-state"}), overridesForm(model));
    detail.append(cell);
    cell.append(el("h3", {text: "Engine log"}), el("pre", {class: "log", "data-field": "log", tabindex: "0", text: "…"}),
                el("h3", {text: "Timeline"}), el("ol", {class: "timeline", "data-field": "timeline"}));
    more.addEventListener("click", () => {
      detail.hidden = !detail.hidden;
      more.setAttribute("aria-expanded", String(!detail.hidden));
      for (const other of body().querySelectorAll("tr.detail")) {  // one open row: its log streams
        if (other !== detail && !other.hidden) {
          other.hidden = true;
          body().querySelector(`tr.serve[data-serve="${CSS.escape(other.id.slice(7))}"] [aria-expanded]`).setAttribute("aria-expanded", "false");
        }
      }
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({detail: detail.hidden ? null : model.id}));
    });
    body().append(row, detail);
    return row;
  }

  function fill(model) {
    current[model.id] = model;
    const row = rowFor(model);
    const cell = (field) => row.querySelector(`[data-field="${field}"]`);
    const caps = model.capabilities || {};
    put(cell("name"), el("strong", {text: model.id}),
      model.model !== model.id ? el("span", {class: "muted", text: ` (model ${model.model})`}) : null,
      el("div", {class: "tags"}, ...[model.tier && el("span", {class: "tag", text: model.tier}),
        caps.tools && el("span", {class: "tag", text: "tools"}),
        (caps.modalities || []).includes("image") && el("span", {class: "tag", text: "images"}),
        caps.thinking && el("span", {class: "tag", text: "thinking"}),
        model.on_demand && el("span", {class: "tag", text: "on demand"}),
        !model.enabled && el("span", {class: "tag warn", text: "disabled"})].filter(Boolean)));
    const state = el("span", {class: `badge state-${model.state}`, "data-state": model.state, text: model.state});
    put(cell("state"), state, model.last_error ? el("div", {class: "error-text", text: model.last_error.code}) : null);
    put(cell("runs"), el("span", {text: `${model.runtime} · ${model.engine}${model.host ? " @ " + model.host : ""}`}),
        model.host_silent ? el("div", {class: "error-text", text: `host ${model.host} is silent`}) : null);
    const gpu = cell("gpu");
    if (model.gpu && model.device) {
      const used = model.device.used_gb, capacity = model.device.capacity_gb;
      const meter = el("meter", {min: 0, max: capacity, value: used, "aria-label": `GPU ${model.gpu}: ${used} of ${capacity} GB used`});
      put(gpu, el("div", {text: `${model.gpu}: ${model.footprint_gb ?? "?"} GB`}), meter);
    } else put(gpu, el("span", {class: "muted", text: model.gpu || "–"}));
    cell("inflight").textContent = model.in_flight;
    cell("queued").textContent = model.queue_depth;
    put(cell("rpm"), spark(model.traffic.requests, "requests per minute", ""));
    put(cell("ttft"), spark(model.traffic.ttft_p50_ms, "p50 TTFT", " ms"));
    row.querySelector('[data-action="load"]').disabled = ["loaded", "loading"].includes(model.state) || model.runtime === "remote";
    row.querySelector('[data-action="unload"]').disabled = model.state !== "loaded" || model.runtime === "remote";
    const detail = document.getElementById(`detail-${model.id}`).querySelector(".detail-state");
    put(detail, 
      el("div", {}, el("strong", {text: "Live overrides: "}), el("code", {text: JSON.stringify(model.live_overrides || {})})),
      model.last_error ? el("pre", {class: "error-text", text: `${model.last_error.code}: ${model.last_error.message}`}) : null);
  }

  function draw(board) {
    const seen = new Set();
    for (const model of board.models) { fill(model); seen.add(model.id); }
    for (const row of body().querySelectorAll("tr.serve")) {
      if (!seen.has(row.dataset.serve)) { document.getElementById(`detail-${row.dataset.serve}`)?.remove(); row.remove(); }
    }
  }

  function showDetail(message) {
    const row = document.getElementById(`detail-${message.serve}`);
    if (!row) return;
    const log = row.querySelector('[data-field="log"]');
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = message.log || "(no engine log: Anvil does not run this serve, or it has not started)";
    if (atEnd) log.scrollTop = log.scrollHeight;  // follow the tail unless the operator scrolled up
    put(row.querySelector('[data-field="timeline"]'), ...message.events.map((event) => el("li", {
      class: event.outcome === "failed" ? "error-text" : "",
      text: `${event.at.slice(0, 19).replace("T", " ")} · ${event.action}: ${event.before || "?"} → ${event.after || "?"} ` +
            `(${event.outcome}) · ${event.by}${event.detail ? " · " + event.detail : ""}`})));
  }

  let socket = null;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/models/");
    socket.onopen = () => {
      live().textContent = "live"; live().className = "badge ok";
      const open = [...body().querySelectorAll("tr.detail")].find((row) => !row.hidden);
      if (open) socket.send(JSON.stringify({detail: open.id.slice(7)}));
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "detail") showDetail(message); else draw(message);
    };
    socket.onclose = () => { live().textContent = "reconnecting…"; live().className = "badge unknown"; setTimeout(connect, 2000); };
  }

  document.addEventListener("DOMContentLoaded", () => {
    draw(JSON.parse(document.getElementById("board-data").textContent));
    connect();
  });
})();
