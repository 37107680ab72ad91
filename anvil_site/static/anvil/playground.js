// The playground: requests go over /ws/playground/ and are served by the front door's own code with the console's
// key; each answer streams back on its lane ("a", or "b" beside it when comparing) as the engine makes it.
(function () {
  "use strict";
  let socket = null;
  const lanes = {};

  function lane(name) { return document.querySelector(`.lane[data-lane="${name}"]`); }
  function field(name, key) { return lane(name).querySelector(`[data-field="${key}"]`); }

  function meta(name) {
    const state = lanes[name];
    const parts = [];
    if (state.servedBy) parts.push(`served by ${state.servedBy}`);
    if (state.firstAt) parts.push(`TTFT ${(state.firstAt - state.sentAt).toFixed(0)} ms`);
    if (state.completion && state.endAt && state.firstAt && state.endAt > state.firstAt) {
      parts.push(`${(state.completion / ((state.endAt - state.firstAt) / 1000)).toFixed(1)} tokens/s`);
    }
    if (state.completion) parts.push(`${state.completion} tokens`);
    const line = field(name, "meta");
    line.replaceChildren(document.createTextNode(parts.join(" · ")));
    if (state.decision) {
      const link = document.createElement("a");
      link.href = `/console/traffic/${state.decision}/`;
      link.textContent = "its decision";
      line.append(" · ", link);
    }
  }

  function onMessage(message) {
    const state = lanes[message.lane];
    if (!state) return;
    const text = field(message.lane, "text");
    if (message.type === "start") {
      state.servedBy = message.served_by; state.decision = message.decision;
    } else if (message.type === "event" && message.data && typeof message.data === "object") {
      const choice = (message.data.choices || [])[0];
      const delta = choice && choice.delta ? (choice.delta.content || "") : "";
      if (delta) {
        if (!state.firstAt) state.firstAt = performance.now();
        text.textContent += delta;
      }
      if (message.data.usage) state.completion = message.data.usage.completion_tokens;
    } else if (message.type === "answer") {
      text.textContent = typeof message.data === "string" ? message.data : JSON.stringify(message.data, null, 2);
    } else if (message.type === "end") {
      state.endAt = performance.now();
    } else if (message.type === "error") {
      text.textContent = "";
      field(message.lane, "meta").textContent = `${message.status} ${message.code}: ${message.message}`;
      return;
    }
    meta(message.lane);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/playground/");
    const badge = document.getElementById("play-live");
    socket.onopen = () => { badge.textContent = "connected"; badge.className = "badge ok"; };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.lane === "native") showNative(message); else onMessage(message);
    };
    socket.onclose = () => { badge.textContent = "reconnecting…"; badge.className = "badge unknown"; setTimeout(connect, 2000); };
  }

  function readImage(input) {
    const file = input.files && input.files[0];
    if (!file) return Promise.resolve(null);
    return new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(file);
    });
  }

  async function send(event) {
    event.preventDefault();
    const form = event.target;
    const error = document.getElementById("chat-error");
    error.textContent = "";
    let tools = null;
    if (form.tools.value.trim()) {
      try { tools = JSON.parse(form.tools.value); } catch (problem) { error.textContent = `Tools: not JSON (${problem.message}).`; return; }
      if (!Array.isArray(tools)) { error.textContent = "Tools: a JSON list of tools."; return; }
    }
    const seed = form.seed.value === "" ? Math.floor(Math.random() * 2 ** 31) : Number(form.seed.value);
    const image = await readImage(form.image);
    const compare = form.compare.checked;
    for (const [name, model] of compare ? [["a", form.model.value], ["b", form.model_b.value]] : [["a", form.model.value]]) {
      const option = [...document.querySelectorAll(`#model-a option`)].find((o) => o.value === model);
      const takesImages = option && option.dataset.images === "1";
      const content = image && takesImages ? [{type: "text", text: form.prompt.value}, {type: "image_url", image_url: {url: image}}]
        : form.prompt.value;
      const messages = form.system.value.trim() ? [{role: "system", content: form.system.value}] : [];
      messages.push({role: "user", content: content});
      const body = {model: model, messages: messages, stream: true, stream_options: {include_usage: true},
                    temperature: Number(form.temperature.value), top_p: Number(form.top_p.value),
                    max_tokens: Number(form.max_tokens.value), seed: seed};
      if (tools) body.tools = tools;
      lanes[name] = {sentAt: performance.now()};
      lane(name).hidden = false;
      field(name, "title").textContent = model;
      field(name, "text").textContent = "";
      field(name, "meta").textContent = "waiting…";
      socket.send(JSON.stringify({lane: name, path: "chat", body: body}));
    }
    if (!compare) lane("b").hidden = true;
  }

  function showNative(message) {
    const out = document.getElementById("native-result");
    if (message.type === "answer") out.textContent = JSON.stringify(message.data, null, 2);
    else if (message.type === "error") out.textContent = `${message.status} ${message.code}: ${message.message}`;
  }

  function native(event) {
    event.preventDefault();
    const form = event.target, path = event.submitter ? event.submitter.value : "generate";
    const body = path === "generate" ? {model: form.model.value, prompts: [form.prompt.value], max_tokens: 32}
      : {model: form.model.value, prompts: [form.prompt.value], continuations: [form.continuation.value]};
    document.getElementById("native-result").textContent = "waiting…";
    socket.send(JSON.stringify({lane: "native", path: path, body: body}));
  }

  document.addEventListener("DOMContentLoaded", () => {
    connect();
    document.getElementById("chat-form").addEventListener("submit", send);
    const compare = document.getElementById("compare");
    compare.addEventListener("change", () => { document.getElementById("model-b").disabled = !compare.checked; });
    const nativeForm = document.getElementById("native-form");
    if (nativeForm) nativeForm.addEventListener("submit", native);
  });
})();
