// Roost console: the chat panel and the live event stream of an agent's page.
// Plain browser JavaScript, no build step. Everything else is server-rendered HTML
// (updated by htmx where it is live).
"use strict";

(function () {
  // Server-sent events from a fetch() response body (EventSource cannot POST).
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  function text(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function bubble(log, who, className) {
    const item = document.createElement("li");
    item.className = className;
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    const body = document.createElement("span");
    body.className = "body";
    item.append(label, body);
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  function setUpChat(panel) {
    const form = panel.querySelector("form");
    const log = panel.querySelector(".chat-log");
    const input = form.querySelector("textarea");
    const asJson = form.querySelector("input[name=json]");
    const button = form.querySelector("button[type=submit]");
    const statusTarget = document.querySelector(panel.dataset.statusTarget || "#agent-status");

    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const raw = input.value.trim();
      if (!raw) return;
      let message = raw;
      if (asJson.checked) {
        try {
          message = JSON.parse(raw);
        } catch (error) {
          bubble(log, "Console", "failed").querySelector(".body").textContent =
            "Not valid JSON: " + error.message;
          return;
        }
      }
      bubble(log, "You", "from-you").querySelector(".body").textContent = text(message);
      input.value = "";
      button.disabled = true;
      let streaming = null; // the agent's reply being streamed, token by token
      const startStreaming = () => {
        streaming = bubble(log, "Agent", "from-agent");
        streaming.setAttribute("aria-busy", "true");
        streaming.dataset.tokens = "0";
        return streaming;
      };
      try {
        const response = await fetch(panel.dataset.messagesUrl, {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
          body: JSON.stringify({ message: message }),
          credentials: "same-origin",
        });
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          const problem = body.error ? body.error.message : response.statusText;
          bubble(log, "Error " + response.status, "failed").querySelector(".body").textContent = problem;
          return;
        }
        await readEvents(response, (name, data) => {
          if (name === "token") {
            const item = streaming || startStreaming();
            item.querySelector(".body").textContent += data;
            item.dataset.tokens = String(Number(item.dataset.tokens) + 1);
            log.scrollTop = log.scrollHeight;
          } else if (name === "reply") {
            const item = streaming || startStreaming();
            item.querySelector(".body").textContent = text(data);
            item.removeAttribute("aria-busy");
            item.classList.add("reply");
            streaming = null;
          } else if (name === "error") {
            const failed = bubble(log, "Error " + data.status, "failed");
            failed.querySelector(".body").textContent = data.error.type + ": " + data.error.message;
          } else if (name === "done") {
            log.dataset.done = String(Number(log.dataset.done || "0") + 1);
          }
        });
      } catch (error) {
        bubble(log, "Console", "failed").querySelector(".body").textContent =
          "The connection failed: " + error.message;
      } finally {
        if (streaming) streaming.removeAttribute("aria-busy");
        button.disabled = false;
        input.focus();
        if (statusTarget && window.htmx) window.htmx.trigger(statusTarget, "refresh");
      }
    });
  }

  function setUpEvents(panel) {
    const log = panel.querySelector(".event-log");
    const state = panel.querySelector("#events-state");
    const source = new EventSource(panel.dataset.eventsUrl);
    const limit = 100;

    function add(what, detail, at) {
      const item = document.createElement("li");
      const time = document.createElement("time");
      const when = at ? new Date(at * 1000) : new Date();
      time.dateTime = when.toISOString();
      time.textContent = when.toISOString().slice(11, 19);
      const label = document.createElement("span");
      label.className = "what";
      label.textContent = what;
      item.append(time, label, document.createTextNode(detail));
      log.prepend(item);
      while (log.children.length > limit) log.lastElementChild.remove();
    }

    source.addEventListener("open", () => { state.textContent = "Listening."; });
    source.addEventListener("error", () => { state.textContent = "Disconnected; retrying…"; });
    source.addEventListener("turn", (event) => {
      const turn = JSON.parse(event.data);
      add("turn", turn.export + ": " + turn.outcome + " in " + turn.latency, turn.at);
      const table = document.querySelector("#recent-turns tbody");
      if (table) {
        const row = table.insertRow(0);
        const time = document.createElement("time");
        time.dateTime = new Date(turn.at * 1000).toISOString();
        time.textContent = turn.time;
        const code = document.createElement("code");
        code.textContent = turn.export;
        const outcome = document.createElement("span");
        outcome.className = "outcome " + (turn.outcome === "ok" ? "ok" : "failed");
        outcome.textContent = turn.outcome;
        [time, code, outcome, document.createTextNode(turn.latency)].forEach((node) => {
          row.insertCell().append(node);
        });
        row.cells[3].className = "num";
      }
    });
    source.addEventListener("push", (event) => {
      add("push", text(JSON.parse(event.data).message));
    });
    source.addEventListener("status", (event) => {
      const status = JSON.parse(event.data);
      let detail = status.resident ? "resident" : "hibernated";
      if (status.held_resident_by.length) detail += " (held: " + status.held_resident_by.join(", ") + ")";
      if (status.pending_ops) detail += ", " + status.pending_ops + " pending ops";
      add("status", detail);
    });
    window.addEventListener("pagehide", () => source.close());
  }

  function start() {
    document.querySelectorAll("section.chat[data-messages-url]").forEach(setUpChat);
    document.querySelectorAll("section.events[data-events-url]").forEach(setUpEvents);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
