// Page helpers of the demo, on top of ws4redis.js (WS4Redis).
"use strict";
const Demo = (() => {
  const statusEl = () => document.getElementById("status");
  let sockets = 0;

  function setStatus(text, cls) {
    const el = statusEl();
    if (el) { el.textContent = text; el.className = "status " + cls; }
  }

  // Open a websocket on a facility+query; every message goes to onMessage.
  function connect(facilityAndQuery, onMessage) {
    sockets += 1;
    return WS4Redis({
      uri: WEBSOCKET_URI + facilityAndQuery,
      heartbeat_msg: WS4REDIS_HEARTBEAT,
      resume: true,   // after a reconnect, the server replays what this page missed
      history_gap: () => { if (document.getElementById("messages")) append("messages", "(some messages were missed; reload the page)"); },
      receive_message: onMessage,
      connecting: () => setStatus("connecting…", "connecting"),
      connected: () => setStatus("connected", "connected"),
      disconnected: () => setStatus("disconnected, reconnecting…", "disconnected"),
    });
  }

  function append(listId, text) {
    const li = document.createElement("li");
    li.textContent = text;
    document.getElementById(listId).appendChild(li);
  }

  return {
    connect,
    status() { if (!sockets) setStatus("", "idle"); },
    chat(facilityAndQuery) { return connect(facilityAndQuery, (msg) => append("messages", msg)); },
    onSubmit(send) {
      document.getElementById("chat-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const input = document.getElementById("text");
        if (input.value.trim()) { send(input.value.trim()); input.value = ""; }
      });
    },
    post(url, fields) {
      const csrf = (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
      return fetch(url, {method: "POST", headers: {"X-CSRFToken": csrf}, body: new URLSearchParams(fields)});
    },
    // The bell: a second socket on the user's own notifications.
    bell() {
      let count = 0;
      WS4Redis({
        uri: WEBSOCKET_URI + "notifications?subscribe-user",
        receive_message: (msg) => {
          count += 1;
          document.getElementById("bell-count").textContent = String(count);
          append("notifications", msg);
        },
      });
    },
  };
})();
