/*
 * ws4redis.js: the browser client of ws4redis_uwsgi (the API of ws4redis.js
 * from django-websocket-redis, without jQuery). No dependencies, ES2017.
 *
 * Usage, in a template rendered with the context processor
 * "ws4redis_uwsgi.context_processors.default":
 *
 *   {% load static %}
 *   <script src="{% static 'js/ws4redis.js' %}"></script>
 *   <script>
 *   const ws4redis = WS4Redis({        // `new WS4Redis({...})` works too
 *     uri: "{{ WEBSOCKET_URI|escapejs }}chat?subscribe-broadcast&publish-broadcast&echo",
 *     heartbeat_msg: {{ WS4REDIS_HEARTBEAT|default:"null" }},
 *     receive_message: (msg) => console.log("received", msg),
 *     connecting: () => console.log("connecting"),
 *     connected: () => console.log("connected"),
 *     disconnected: (evt) => console.log("disconnected", evt.code),
 *   });
 *   ws4redis.send_message("hello everybody");   // false when not connected
 *   </script>
 *
 * Options (only `uri` is required):
 *   uri                 full ws:// or wss:// URL: WEBSOCKET_URI + facility + query
 *   receive_message(m)  called with event.data of every message except heartbeat
 *                       answers: a string for text frames; for binary frames a Blob,
 *                       or an ArrayBuffer with binary_type: 'arraybuffer'
 *   binary_type         'blob' (the browser's default) or 'arraybuffer'
 *   heartbeat_msg       string or null (default). When set, it is sent every
 *                       heartbeat_interval ms; the server (WS4REDIS_HEARTBEAT, the
 *                       same string) echoes it back. When two heartbeats in a row
 *                       got no answer, the socket is considered dead: it is closed
 *                       and disconnected(evt) is called at once with
 *                       {code: 1006, reason: 'missed heartbeats', wasClean: false},
 *                       then the client reconnects.
 *   heartbeat_interval  milliseconds between heartbeats, default 5000
 *   connecting()        called each time a socket is created (first connection and
 *                       every reconnection); get_state() is then WebSocket.CONNECTING
 *   connected()         called when a socket opens
 *   disconnected(evt)   called with the close event whenever a socket closes,
 *                       including a failed connection attempt and the end of close()
 *   WebSocket           the WebSocket class to use; defaults to the global WebSocket,
 *                       looked up at each connection. Tests inject a fake here.
 *   token               for clients without the site's session cookie: a token from the
 *                       site's ws4redis_uwsgi.django.views.websocket_token view, or a function
 *                       returning one (or a promise of one), called before every connection
 *                       (tokens are short-lived: fetch a fresh one); offered as the
 *                       subprotocols 'ws4redis' and 'ws4redis.token.<token>'
 *   resume              true to lose nothing across reconnects (default false): the
 *                       client adds resume=<token of the last message> to the URL of every
 *                       connection, the server replays exactly what was missed, and
 *                       receive_message still gets only the payloads
 *   session_ended(evt)  called (after disconnected) when the server closed with 4001: the
 *                       page's Django session ended (logout, password change elsewhere, user
 *                       deactivated or deleted); say so, or send the user to the login page
 *   reconnect_after_session_end   false (default): after a 4001 the client does not reconnect
 *                       (it would come back as someone else, or as no one); true: it does, as
 *                       after any other close
 *   history_gap()       with resume: called when the server could not replay
 *                       everything (its history was trimmed): reload the page's state
 *   presence(event, username)
 *                       join and leave events of the facility (WS4REDIS_PRESENCE on the
 *                       server): event is 'join' when a user's first connection opens
 *                       (on any worker), 'leave' when the last one closes. The client
 *                       adds the parameter presence to the URL; messages still reach
 *                       receive_message as before
 *
 * Methods of the returned object:
 *   send_message(msg)   sends a string, Blob, ArrayBuffer or view; true if sent,
 *                       false when not connected
 *   close()             closes for good: stops heartbeats and any pending or future
 *                       reconnection (disconnected(evt) is still called once the
 *                       socket has closed)
 *   get_state()         the socket's readyState: WebSocket.CONNECTING (0), OPEN (1),
 *                       CLOSING (2), or CLOSED (3) when there is no socket (between a
 *                       close and the next reconnection)
 *   is_connecting(), is_connected(), is_closing(), is_closed()   booleans
 *   get_last_id()       with resume: the resume token of the last message received ('' before
 *                       any); opaque, it names a position in each of the socket's channels
 *
 * The resume protocol: every frame is "<token>\n<payload>" (an empty header keeps the last token), a
 * frame "!gap\n" announces a gap, heartbeat answers come without a header. A client that asks for
 * presence events gets its frames so too, and an event as "!join\n<username>" or
 * "!leave\n<username>" (tokens never start with "!"; other "!" notices are ignored).
 *
 * Reconnection: after any close not asked for by close() (or, by default, a 4001), the client reconnects
 * after WS4Redis.backoff_delay(attempt) ms: exponential backoff with jitter (see
 * there). The attempt count restarts once a connection opens. A server that restarts (close
 * code 1012) may add a wait to the first attempt, "retry in <ms> ms" in the close reason
 * (WS4Redis.retry_hint_ms): a worker that held thousands of websockets spreads their return
 * over the seconds it takes to serve them all, so that they do not all come back at once.
 *
 * Loaded as a classic <script>, this sets window.WS4Redis; under CommonJS
 * (Node, bundlers) it is module.exports.
 */
'use strict';

(function (root, factory) {
  const WS4Redis = factory();
  if (typeof module === 'object' && module !== null && module.exports) {
    module.exports = WS4Redis;
  } else {
    root.WS4Redis = WS4Redis;
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  // readyState values, fixed by the WebSocket standard.
  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;

  // The close code of a websocket whose Django session ended (logout, password change, user deactivated).
  const SESSION_ENDED = 4001;
  // The close code of a server that restarts, and the longest wait its reason may add (60 s).
  const SERVICE_RESTART = 1012;
  const MAX_RETRY_HINT_MS = 60000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const DEFAULT_HEARTBEAT_INTERVAL_MS = 5000;
  // A heartbeat is considered lost when the next one is due without an answer;
  // after this many lost in a row, the connection is dead.
  const MAX_MISSED_HEARTBEATS = 2;

  /**
   * Milliseconds to wait before reconnection attempt number `attempt` (1 for the
   * first reconnection after a close, 2 for the next, ...).
   *
   * The ceiling is 500 ms doubled per attempt and capped at 30 s: 500, 1000, 2000,
   * ..., 16000, 30000, 30000, ... The delay is drawn uniformly between half the
   * ceiling and the ceiling ("equal jitter": half fixed, half random), so browsers
   * that lost the same server do not all come back at the same moment, yet none
   * retries sooner than half the ceiling. `random` is a number in [0, 1)
   * (Math.random() by default): 0 gives ceiling / 2, values near 1 nearly the
   * ceiling. The result never exceeds 30000.
   */
  function backoff_delay(attempt, random = Math.random()) {
    const n = Number.isFinite(attempt) && attempt >= 1 ? Math.floor(attempt) : 1;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, Math.min(n - 1, 30)));
    const r = Number.isFinite(random) ? Math.min(Math.max(random, 0), 1) : 0;
    return ceiling * (0.5 + 0.5 * r);
  }

  /**
   * The milliseconds a server restart's close event asks the client to wait before its first
   * reconnection, beyond its own backoff: the "retry in <ms> ms" of a 1012's reason, at most
   * 60 s; 0 for any other close.
   */
  function retry_hint_ms(evt) {
    if (!evt || evt.code !== SERVICE_RESTART || typeof evt.reason !== 'string') {
      return 0;
    }
    const found = /retry in (\d{1,6}) ms/.exec(evt.reason);
    return found ? Math.min(Number(found[1]), MAX_RETRY_HINT_MS) : 0;
  }

  function WS4Redis(options) {
    if (!(this instanceof WS4Redis)) {
      return new WS4Redis(options);
    }
    const opts = Object.assign({heartbeat_msg: null, heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL_MS}, options);
    if (typeof opts.uri !== 'string' || opts.uri === '') {
      throw new TypeError('WS4Redis: the option "uri" (a ws:// or wss:// URL) is required');
    }
    if (opts.heartbeat_msg !== null && opts.heartbeat_msg !== undefined && typeof opts.heartbeat_msg !== 'string') {
      throw new TypeError('WS4Redis: "heartbeat_msg" must be a string or null');
    }
    if (!(Number.isFinite(opts.heartbeat_interval) && opts.heartbeat_interval > 0)) {
      throw new TypeError('WS4Redis: "heartbeat_interval" must be a positive number of milliseconds');
    }
    const heartbeat_msg = opts.heartbeat_msg || null;
    // Frames carry a header ("<token>\n" or a "!" notice) with resume, and with presence events.
    const framed = Boolean(opts.resume) || typeof opts.presence === 'function';

    let ws = null;                 // the current socket, null between a close and the next connection
    let closed_for_good = false;   // set by close()
    let attempts = 0;              // reconnections since the last successful open
    let reconnect_timer = null;
    let heartbeat_timer = null;
    let missed_heartbeats = 0;
    let last_id = '';              // with resume: the id of the last message received

    function callback(name, ...args) {
      if (typeof opts[name] === 'function') {
        opts[name](...args);
      }
    }

    function connect() {
      const WebSocketClass = opts.WebSocket || root_websocket();
      if (!WebSocketClass) {
        throw new Error('WS4Redis: this environment has no WebSocket; pass the option "WebSocket"');
      }
      if (typeof opts.token !== 'function') {
        open_socket(WebSocketClass, opts.token || null);
        return;
      }
      // A fresh token before each connection: the function may return it or a promise of it.
      callback('connecting');
      Promise.resolve().then(() => opts.token()).then((token) => {
        if (!closed_for_good && ws === null) {
          open_socket(WebSocketClass, token);
        }
      }, (err) => {
        if (typeof console !== 'undefined') {
          console.error('WS4Redis: no token', err);
        }
        schedule_reconnect();
      });
    }

    function open_socket(WebSocketClass, token) {
      let url = opts.resume ? with_resume(opts.uri, last_id) : opts.uri;
      if (typeof opts.presence === 'function') {
        url = with_presence(url);
      }
      // The token travels as a subprotocol: a header, which access logs do not record.
      const socket = token ? new WebSocketClass(url, ['ws4redis', 'ws4redis.token.' + token]) : new WebSocketClass(url);
      if (framed) {
        socket.binaryType = 'arraybuffer';   // to split the id from binary payloads
      } else if (opts.binary_type) {
        socket.binaryType = opts.binary_type;
      }
      socket.onopen = () => on_open(socket);
      socket.onmessage = (evt) => on_message(socket, evt);
      socket.onclose = (evt) => on_close(socket, evt);
      socket.onerror = null;   // an error is always followed by a close event
      ws = socket;
      callback('connecting');
    }

    function reconnect() {
      reconnect_timer = null;
      if (closed_for_good) {
        return;
      }
      try {
        connect();
      } catch (err) {
        // The constructor refused, although it took the same URL before: try again later.
        ws = null;
        schedule_reconnect();
        if (typeof console !== 'undefined') {
          console.error('WS4Redis: cannot reconnect', err);
        }
      }
    }

    function schedule_reconnect(extra_ms = 0) {
      if (closed_for_good || reconnect_timer !== null) {
        return;
      }
      attempts += 1;
      reconnect_timer = setTimeout(reconnect, backoff_delay(attempts) + extra_ms);
    }

    function start_heartbeat(socket) {
      stop_heartbeat();
      if (heartbeat_msg === null) {
        return;
      }
      heartbeat_timer = setInterval(() => send_heartbeat(socket), opts.heartbeat_interval);
    }

    function stop_heartbeat() {
      if (heartbeat_timer !== null) {
        clearInterval(heartbeat_timer);
        heartbeat_timer = null;
      }
      missed_heartbeats = 0;
    }

    function send_heartbeat(socket) {
      if (socket !== ws || socket.readyState !== OPEN) {
        stop_heartbeat();   // not reached in practice: every close stops the heartbeat
        return;
      }
      if (missed_heartbeats >= MAX_MISSED_HEARTBEATS) {
        abandon(socket, {type: 'close', code: 1006, reason: 'missed heartbeats', wasClean: false});
        return;
      }
      missed_heartbeats += 1;
      try {
        socket.send(heartbeat_msg);
      } catch (err) {
        abandon(socket, {type: 'close', code: 1006, reason: 'heartbeat could not be sent', wasClean: false});
      }
    }

    // A dead connection may take minutes to report its close: drop it now.
    function abandon(socket, evt) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close();
      } catch (err) {
        // already closed
      }
      on_close(socket, evt);
    }

    function on_open(socket) {
      if (socket !== ws) {
        return;
      }
      if (closed_for_good) {
        socket.close();
        return;
      }
      attempts = 0;
      start_heartbeat(socket);
      callback('connected');
    }

    function on_message(socket, evt) {
      if (socket !== ws) {
        return;
      }
      if (heartbeat_msg !== null && evt.data === heartbeat_msg) {
        missed_heartbeats = 0;
        return;
      }
      if (!framed) {
        callback('receive_message', evt.data);
        return;
      }
      const [header, payload] = split_header(evt.data);
      if (header.startsWith('!')) {
        if (header === '!gap') {
          callback('history_gap');
        } else if ((header === '!join' || header === '!leave') && typeof payload === 'string') {
          callback('presence', header.slice(1), payload);
        }
        return;
      }
      if (header !== '') {
        last_id = header;
      }
      callback('receive_message', payload);
    }

    // "<id>\n<payload>": a string, or an ArrayBuffer for binary frames.
    function split_header(data) {
      if (typeof data === 'string') {
        const nl = data.indexOf('\n');
        return nl < 0 ? ['', data] : [data.slice(0, nl), data.slice(nl + 1)];
      }
      const bytes = new Uint8Array(data);
      const nl = bytes.indexOf(10);
      const header = nl < 0 ? '' : String.fromCharCode(...bytes.subarray(0, nl));
      const rest = data.slice(nl + 1);
      const as_blob = opts.binary_type !== 'arraybuffer' && typeof Blob !== 'undefined';
      return [header, as_blob ? new Blob([rest]) : rest];
    }

    function on_close(socket, evt) {
      if (socket !== ws) {
        return;
      }
      ws = null;
      stop_heartbeat();
      if (evt && evt.code === SESSION_ENDED && !opts.reconnect_after_session_end) {
        closed_for_good = true;   // logged out: a reconnection would come back as someone else, or no one
      }
      schedule_reconnect(retry_hint_ms(evt));   // before the callback, so that a throwing callback cannot stop it
      callback('disconnected', evt);
      if (evt && evt.code === SESSION_ENDED) {
        callback('session_ended', evt);
      }
    }

    this.send_message = function (message) {
      if (ws === null || ws.readyState !== OPEN) {
        return false;
      }
      try {
        ws.send(message);
      } catch (err) {
        return false;
      }
      return true;
    };

    this.close = function () {
      closed_for_good = true;
      stop_heartbeat();
      if (reconnect_timer !== null) {
        clearTimeout(reconnect_timer);
        reconnect_timer = null;
      }
      if (ws !== null && ws.readyState !== CLOSING && ws.readyState !== CLOSED) {
        ws.close();
      }
    };

    this.get_last_id = () => last_id;

    this.get_state = function () {
      return ws === null ? CLOSED : ws.readyState;
    };
    this.is_connecting = () => this.get_state() === CONNECTING;
    this.is_connected = () => this.get_state() === OPEN;
    this.is_closing = () => this.get_state() === CLOSING;
    this.is_closed = () => this.get_state() === CLOSED;

    connect();   // a bad URI throws here, to the caller
  }

  // `uri` with its resume parameter set to `id` (replacing one already there).
  function with_resume(uri, id) {
    const hash = uri.indexOf('#');
    const base = hash < 0 ? uri : uri.slice(0, hash);
    const q = base.indexOf('?');
    const path = q < 0 ? base : base.slice(0, q);
    const query = q < 0 ? '' : base.slice(q + 1);
    const params = query.split('&').filter((p) => p !== '' && p !== 'resume' && !p.startsWith('resume='));
    params.push('resume=' + encodeURIComponent(id));
    return path + '?' + params.join('&');
  }

  // `uri` with the parameter presence added (unless there already).
  function with_presence(uri) {
    const hash = uri.indexOf('#');
    const base = hash < 0 ? uri : uri.slice(0, hash);
    const q = base.indexOf('?');
    const query = q < 0 ? '' : base.slice(q + 1);
    if (query.split('&').some((p) => p === 'presence' || p.startsWith('presence='))) {
      return base;
    }
    return base + (q < 0 ? '?' : (query === '' ? '' : '&')) + 'presence';
  }

  // The global WebSocket, looked up by name (globalThis is newer than ES2017).
  function root_websocket() {
    return typeof WebSocket === 'undefined' ? undefined : WebSocket;
  }

  WS4Redis.backoff_delay = backoff_delay;
  WS4Redis.retry_hint_ms = retry_hint_ms;
  WS4Redis.with_resume = with_resume;
  WS4Redis.with_presence = with_presence;
  WS4Redis.BACKOFF_BASE_MS = BACKOFF_BASE_MS;
  WS4Redis.BACKOFF_CAP_MS = BACKOFF_CAP_MS;
  return WS4Redis;
});
