// Tests of ws4redis_uwsgi/static/js/ws4redis.js with plain Node (>= 20): node --test tests/js/test_ws4redis.js
//
// The client takes its WebSocket class from the option `WebSocket` (a fake here, so no network)
// and its timers from the global setTimeout/setInterval, which node:test's mock.timers replaces.
// On top of the mocked timers, the harness counts live timers, to check that nothing is left
// scheduled after close() and that at most one heartbeat interval runs at any time.
'use strict';

const {describe, it, beforeEach, afterEach, mock} = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const SCRIPT = path.join(__dirname, '..', '..', 'ws4redis_uwsgi', 'static', 'js', 'ws4redis.js');
const WS4Redis = require(SCRIPT);

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

class FakeWebSocket {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = CONNECTING;
    this.binaryType = 'blob';
    this.sent = [];
    this.close_calls = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== OPEN) {
      throw new Error('InvalidStateError: the socket is not open');
    }
    this.sent.push(data);
  }

  close() {
    this.close_calls += 1;
    if (this.readyState < CLOSING) {
      this.readyState = CLOSING;   // the close event comes later: see finish_close()
    }
  }

  // What the network does, driven by the tests.
  open() {
    this.readyState = OPEN;
    if (this.onopen) this.onopen({type: 'open'});
  }

  receive(data) {
    if (this.onmessage) this.onmessage({type: 'message', data});
  }

  finish_close(code = 1000, reason = '') {
    this.readyState = CLOSED;
    if (this.onclose) this.onclose({type: 'close', code, reason, wasClean: code === 1000});
  }

  drop() {
    this.finish_close(1006);
  }
}

// mock.timers with a count of live timers, per test.
const live = {timeouts: new Set(), intervals: new Set(), max_intervals: 0};
let saved_globals = null;

function track_timers() {
  saved_globals = {
    setTimeout: globalThis.setTimeout, clearTimeout: globalThis.clearTimeout,
    setInterval: globalThis.setInterval, clearInterval: globalThis.clearInterval,
  };
  mock.timers.enable({apis: ['setTimeout', 'setInterval']});
  const mocked = {
    setTimeout: globalThis.setTimeout, clearTimeout: globalThis.clearTimeout,
    setInterval: globalThis.setInterval, clearInterval: globalThis.clearInterval,
  };
  live.timeouts.clear();
  live.intervals.clear();
  live.max_intervals = 0;
  globalThis.setTimeout = (fn, ms, ...args) => {
    const id = mocked.setTimeout(() => {
      live.timeouts.delete(id);
      fn(...args);
    }, ms);
    live.timeouts.add(id);
    return id;
  };
  globalThis.clearTimeout = (id) => {
    live.timeouts.delete(id);
    mocked.clearTimeout(id);
  };
  globalThis.setInterval = (fn, ms, ...args) => {
    // Node 20's mock.timers keeps firing an interval cleared from its own callback
    // (nodejs/node#59483); browsers and real Node timers stop it. Behave like them.
    const id = mocked.setInterval(() => {
      if (live.intervals.has(id)) fn(...args);
    }, ms);
    live.intervals.add(id);
    live.max_intervals = Math.max(live.max_intervals, live.intervals.size);
    return id;
  };
  globalThis.clearInterval = (id) => {
    live.intervals.delete(id);
    mocked.clearInterval(id);
  };
}

function untrack_timers() {
  Object.assign(globalThis, saved_globals);
  mock.timers.reset();
  Object.assign(globalThis, saved_globals);
}

const tick = (ms) => mock.timers.tick(ms);
const live_timers = () => live.timeouts.size + live.intervals.size;
const sockets = () => FakeWebSocket.instances;
const last_socket = () => FakeWebSocket.instances.at(-1);
// Lets promise callbacks run (the mocked timers do not hold them back).
const flush_promises = () => new Promise((resolve) => setImmediate(resolve));

// A client with every callback recording into `log`.
function make_client(extra = {}) {
  const log = [];
  const client = WS4Redis({
    uri: 'ws://example.test/ws/chat?subscribe-broadcast&publish-broadcast&echo',
    WebSocket: FakeWebSocket,
    connecting: () => log.push(['connecting']),
    connected: () => log.push(['connected']),
    receive_message: (msg) => log.push(['receive', msg]),
    disconnected: (evt) => log.push(['disconnected', evt.code]),
    session_ended: (evt) => log.push(['session_ended', evt.code]),
    ...extra,
  });
  return {client, log};
}

describe('ws4redis.js', () => {
  beforeEach(() => {
    FakeWebSocket.instances = [];
    track_timers();
    mock.method(Math, 'random', () => 0.5);
  });

  afterEach(() => {
    mock.restoreAll();
    untrack_timers();
  });

  describe('token', () => {
    it('offers a token as a subprotocol next to ws4redis, and none without one', () => {
      WS4Redis({uri: 'ws://h/ws/chat?subscribe-user', WebSocket: FakeWebSocket, token: 'abc~1'});
      assert.deepEqual(last_socket().protocols, ['ws4redis', 'ws4redis.token.abc~1']);
      assert.ok(!last_socket().url.includes('abc'));   // never in the URL, which access logs record
      WS4Redis({uri: 'ws://h/ws/chat', WebSocket: FakeWebSocket});
      assert.equal(last_socket().protocols, undefined);
    });

    it('asks a token function for a fresh token before every connection', async () => {
      let issued = 0;
      const client = WS4Redis({
        uri: 'ws://h/ws/chat', WebSocket: FakeWebSocket,
        token: () => Promise.resolve('t' + (++issued)),
      });
      await flush_promises();
      assert.deepEqual(last_socket().protocols, ['ws4redis', 'ws4redis.token.t1']);
      last_socket().open();
      last_socket().drop();
      tick(WS4Redis.backoff_delay(1, 0.5));
      await flush_promises();
      assert.deepEqual(last_socket().protocols, ['ws4redis', 'ws4redis.token.t2']);
      client.close();
    });
  });

  describe('resume', () => {
    it('adds resume= on the first connection and the last id on reconnects', () => {
      const {client, log} = make_client({resume: true, uri: 'ws://h/ws/chat?subscribe-broadcast&resume=old'});
      assert.equal(last_socket().url, 'ws://h/ws/chat?subscribe-broadcast&resume=');
      assert.equal(last_socket().binaryType, 'arraybuffer');
      last_socket().open();
      last_socket().receive('17-0\nfirst');
      last_socket().receive('17-1\nsecond');
      assert.equal(client.get_last_id(), '17-1');
      last_socket().drop();
      tick(WS4Redis.backoff_delay(1, 0.5));
      assert.equal(last_socket().url, 'ws://h/ws/chat?subscribe-broadcast&resume=17-1');
      assert.deepEqual(log.filter((e) => e[0] === 'receive'), [['receive', 'first'], ['receive', 'second']]);
      client.close();
    });

    it('reconnects after a 1012 (server restart) and resumes', () => {
      const {client} = make_client({resume: true});
      last_socket().open();
      last_socket().receive('5-0\nhello');
      last_socket().finish_close(1012, 'server restart');
      assert.equal(sockets().length, 1);
      tick(WS4Redis.BACKOFF_BASE_MS);
      assert.equal(sockets().length, 2);
      assert.ok(last_socket().url.endsWith('resume=5-0'));
      client.close();
    });

    it('waits what a restarting server asks on top of its backoff, for the first attempt only', () => {
      const {client} = make_client({resume: true});
      last_socket().open();
      last_socket().finish_close(1012, 'server restart, retry in 3000 ms');
      tick(375 + 2999);   // 375: the first backoff with Math.random() = 0.5
      assert.equal(sockets().length, 1, 'not before the backoff and the 3 s asked for');
      tick(1);
      assert.equal(sockets().length, 2);
      last_socket().drop();   // the new worker is not there yet
      tick(750);   // the second backoff alone
      assert.equal(sockets().length, 3);
      client.close();
    });

    it('reads the wait of a 1012 only, and at most 60 s of it', () => {
      assert.equal(WS4Redis.retry_hint_ms({code: 1012, reason: 'server restart, retry in 1234 ms'}), 1234);
      assert.equal(WS4Redis.retry_hint_ms({code: 1012, reason: 'server restart, retry in 999999 ms'}), 60000);
      assert.equal(WS4Redis.retry_hint_ms({code: 1012, reason: 'server restart'}), 0);
      assert.equal(WS4Redis.retry_hint_ms({code: 1000, reason: 'retry in 1234 ms'}), 0);
      assert.equal(WS4Redis.retry_hint_ms({code: 1012}), 0);
      assert.equal(WS4Redis.retry_hint_ms(undefined), 0);
    });

    it('does not reconnect after 4001 (session ended) and tells the page', () => {
      const {client, log} = make_client();
      last_socket().open();
      last_socket().finish_close(4001, 'session ended');
      tick(60000);
      assert.equal(sockets().length, 1);
      assert.deepEqual(log.filter((e) => e[0] === 'session_ended').length, 1);
      assert.equal(live_timers(), 0);
      client.close();
    });

    it('reconnects after 4001 when the page asks for it', () => {
      const {client} = make_client({reconnect_after_session_end: true});
      last_socket().open();
      last_socket().finish_close(4001, 'session ended');
      tick(WS4Redis.BACKOFF_BASE_MS);
      assert.equal(sockets().length, 2);
      client.close();
    });

    it('splits the id from binary payloads and hands out a Blob unless asked for ArrayBuffer', async () => {
      const received = [];
      const client = WS4Redis({uri: 'ws://h/ws/b', WebSocket: FakeWebSocket, resume: true, receive_message: (m) => received.push(m)});
      last_socket().open();
      last_socket().receive(new Uint8Array([0x39, 0x2d, 0x30, 0x0a, 0xff, 0x00]).buffer);  // "9-0\n" + bytes
      assert.equal(client.get_last_id(), '9-0');
      assert.ok(received[0] instanceof Blob);
      assert.deepEqual([...new Uint8Array(await received[0].arrayBuffer())], [0xff, 0x00]);
      client.close();
      const raw = [];
      const client2 = WS4Redis({uri: 'ws://h/ws/b', WebSocket: FakeWebSocket, resume: true, binary_type: 'arraybuffer', receive_message: (m) => raw.push(m)});
      last_socket().open();
      last_socket().receive(new Uint8Array([0x31, 0x2d, 0x31, 0x0a, 0x01]).buffer);
      assert.deepEqual([...new Uint8Array(raw[0])], [0x01]);
      client2.close();
    });

    it('calls history_gap for a gap notice and keeps heartbeat answers out', () => {
      let gaps = 0;
      const {client, log} = make_client({resume: true, heartbeat_msg: '--hb--', history_gap: () => { gaps += 1; }});
      last_socket().open();
      last_socket().receive('!gap\n');
      last_socket().receive('--hb--');
      last_socket().receive('\nraw message without id');
      assert.equal(gaps, 1);
      assert.deepEqual(log.filter((e) => e[0] === 'receive'), [['receive', 'raw message without id']]);
      assert.equal(client.get_last_id(), '');
      client.close();
    });

    it('leaves plain clients untouched', () => {
      const {client, log} = make_client();
      assert.ok(!last_socket().url.includes('resume'));
      last_socket().open();
      last_socket().receive('1-0\nnot parsed');
      assert.deepEqual(log.at(-1), ['receive', '1-0\nnot parsed']);
      client.close();
    });
  });

  describe('presence', () => {
    it('asks for events in the URL and hands join and leave to the callback, messages to receive_message', () => {
      const events = [];
      const {client, log} = make_client({presence: (event, username) => events.push([event, username])});
      assert.equal(last_socket().url, 'ws://example.test/ws/chat?subscribe-broadcast&publish-broadcast&echo&presence');
      assert.equal(last_socket().binaryType, 'arraybuffer');
      last_socket().open();
      last_socket().receive('!join\njohn');
      last_socket().receive('3-0\n!join\nnot an event');   // a message behind its token
      last_socket().receive('!leave\nj\u00f6hn\nx');
      last_socket().receive('!wave\nsomething new');     // a notice this client does not know
      assert.deepEqual(events, [['join', 'john'], ['leave', 'j\u00f6hn\nx']]);
      assert.deepEqual(log.filter((e) => e[0] === 'receive'), [['receive', '!join\nnot an event']]);
      client.close();
    });

    it('adds presence once, with or without a query, and works with resume', () => {
      assert.equal(WS4Redis.with_presence('ws://h/ws/chat'), 'ws://h/ws/chat?presence');
      assert.equal(WS4Redis.with_presence('ws://h/ws/chat?'), 'ws://h/ws/chat?presence');
      assert.equal(WS4Redis.with_presence('ws://h/ws/chat?presence&a'), 'ws://h/ws/chat?presence&a');
      assert.equal(WS4Redis.with_presence('ws://h/ws/chat?a#x'), 'ws://h/ws/chat?a&presence');
      const events = [];
      let gaps = 0;
      const {client, log} = make_client({
        resume: true, uri: 'ws://h/ws/chat?subscribe-user',
        presence: (event, username) => events.push([event, username]), history_gap: () => { gaps += 1; },
      });
      assert.equal(last_socket().url, 'ws://h/ws/chat?subscribe-user&resume=&presence');
      last_socket().open();
      last_socket().receive('7-0\nhello');
      last_socket().receive('!gap\n');
      last_socket().receive('!leave\nmary');
      assert.equal(client.get_last_id(), '7-0');
      assert.deepEqual(events, [['leave', 'mary']]);
      assert.equal(gaps, 1);
      assert.deepEqual(log.filter((e) => e[0] === 'receive'), [['receive', 'hello']]);
      last_socket().drop();
      tick(WS4Redis.backoff_delay(1, 0.5));
      assert.equal(last_socket().url, 'ws://h/ws/chat?subscribe-user&resume=7-0&presence');
      client.close();
    });

    it('leaves clients without the callback as they were', () => {
      const {client, log} = make_client();
      assert.ok(!last_socket().url.includes('presence'));
      last_socket().open();
      last_socket().receive('!join\njohn');
      assert.deepEqual(log.at(-1), ['receive', '!join\njohn']);
      client.close();
    });
  });

  describe('construction', () => {
    it('works with and without new, and exports backoff_delay', () => {
      const a = WS4Redis({uri: 'ws://x/ws/a', WebSocket: FakeWebSocket});
      const b = new WS4Redis({uri: 'ws://x/ws/b', WebSocket: FakeWebSocket});
      assert.ok(a instanceof WS4Redis);
      assert.ok(b instanceof WS4Redis);
      assert.deepEqual(sockets().map((s) => s.url), ['ws://x/ws/a', 'ws://x/ws/b']);
      assert.equal(typeof WS4Redis.backoff_delay, 'function');
      a.close();
      b.close();
    });

    it('requires a uri', () => {
      assert.throws(() => WS4Redis({WebSocket: FakeWebSocket}), TypeError);
      assert.throws(() => WS4Redis(), TypeError);
      assert.equal(sockets().length, 0);
    });

    it('uses globalThis.WebSocket when no WebSocket option is given', () => {
      const original = globalThis.WebSocket;
      globalThis.WebSocket = FakeWebSocket;
      try {
        const client = WS4Redis({uri: 'ws://x/ws/global'});
        assert.equal(last_socket().url, 'ws://x/ws/global');
        client.close();
      } finally {
        globalThis.WebSocket = original;
      }
    });

    it('sets binaryType when binary_type is given', () => {
      const {client, log} = make_client({binary_type: 'arraybuffer'});
      assert.equal(last_socket().binaryType, 'arraybuffer');
      last_socket().open();
      const buffer = new ArrayBuffer(4);
      last_socket().receive(buffer);
      assert.equal(log.at(-1)[1], buffer);
      client.close();
    });

    it('as a classic script, sets WS4Redis on the global object (window)', () => {
      const window = {};
      window.window = window;
      vm.createContext(window);
      vm.runInContext(fs.readFileSync(SCRIPT, 'utf8'), window, {filename: SCRIPT});
      assert.equal(typeof window.WS4Redis, 'function');
      assert.equal(typeof window.WS4Redis.backoff_delay, 'function');
    });
  });

  describe('callbacks and state', () => {
    it('calls connecting, connected, receive_message, disconnected in order', () => {
      const {client, log} = make_client();
      assert.ok(client.is_connecting());
      assert.equal(client.get_state(), CONNECTING);
      last_socket().open();
      assert.ok(client.is_connected());
      last_socket().receive('hello');
      last_socket().receive('world');
      last_socket().drop();
      assert.deepEqual(log, [['connecting'], ['connected'], ['receive', 'hello'], ['receive', 'world'], ['disconnected', 1006]]);
      assert.ok(client.is_closed());
      assert.equal(client.get_state(), CLOSED);
      client.close();
    });

    it('send_message returns false when not connected, true when sent', () => {
      const {client} = make_client();
      assert.equal(client.send_message('too early'), false);
      last_socket().open();
      assert.equal(client.send_message('hello'), true);
      assert.deepEqual(last_socket().sent, ['hello']);
      last_socket().drop();
      assert.equal(client.send_message('while reconnecting'), false);
      client.close();
      assert.equal(client.send_message('after close'), false);
      assert.deepEqual(sockets()[0].sent, ['hello']);
    });

    it('works without any callback', () => {
      const client = WS4Redis({uri: 'ws://x/ws/bare', WebSocket: FakeWebSocket});
      last_socket().open();
      last_socket().receive('ignored');
      last_socket().drop();
      tick(30000);
      assert.equal(sockets().length, 2);
      client.close();
    });
  });

  describe('heartbeat', () => {
    it('is sent every heartbeat_interval and its answers never reach receive_message', () => {
      const {client, log} = make_client({heartbeat_msg: '--heartbeat--', heartbeat_interval: 1000});
      const socket = last_socket();
      tick(5000);
      assert.deepEqual(socket.sent, [], 'no heartbeat before the socket opens');
      socket.open();
      for (let i = 1; i <= 10; i += 1) {
        tick(999);
        assert.equal(socket.sent.length, i - 1);
        tick(1);
        assert.deepEqual(socket.sent, Array(i).fill('--heartbeat--'));
        socket.receive('--heartbeat--');
      }
      socket.receive('a message');
      assert.deepEqual(log, [['connecting'], ['connected'], ['receive', 'a message']]);
      assert.equal(sockets().length, 1, 'answered heartbeats keep the connection');
      assert.ok(client.is_connected());
      client.close();
    });

    it('defaults to one heartbeat every 5 seconds', () => {
      const {client} = make_client({heartbeat_msg: 'hb'});
      last_socket().open();
      tick(4999);
      assert.deepEqual(last_socket().sent, []);
      tick(1);
      assert.deepEqual(last_socket().sent, ['hb']);
      client.close();
    });

    it('is not sent without heartbeat_msg', () => {
      const {client} = make_client();
      last_socket().open();
      tick(60000);
      assert.deepEqual(last_socket().sent, []);
      assert.equal(live.intervals.size, 0);
      client.close();
    });

    it('two unanswered heartbeats in a row close the socket and reconnect', () => {
      const {client, log} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      const first = last_socket();
      first.open();
      tick(1000);
      tick(1000);
      assert.deepEqual(first.sent, ['hb', 'hb']);
      assert.equal(first.close_calls, 0, 'one missing answer is tolerated');
      tick(1000);   // the third heartbeat is due, two went unanswered
      assert.equal(first.close_calls, 1);
      assert.deepEqual(first.sent, ['hb', 'hb']);
      assert.deepEqual(log.at(-1), ['disconnected', 1006]);
      assert.equal(client.get_state(), CLOSED);
      assert.equal(live.intervals.size, 0, 'the heartbeat stopped with the socket');
      first.finish_close();   // the late close event of the abandoned socket changes nothing
      assert.deepEqual(log.filter(([name]) => name === 'disconnected').length, 1);

      tick(375);   // first reconnection: 500 ms ceiling, Math.random() = 0.5
      assert.equal(sockets().length, 2);
      const second = last_socket();
      second.open();
      tick(1000);
      assert.deepEqual(second.sent, ['hb']);
      assert.deepEqual(first.sent, ['hb', 'hb'], 'nothing more on the dead socket');
      client.close();
    });

    it('an answer resets the count of missed heartbeats', () => {
      const {client} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      const socket = last_socket();
      socket.open();
      for (let i = 0; i < 5; i += 1) {
        tick(2000);   // two heartbeats, the second answered late but before the next is due
        socket.receive('hb');
      }
      assert.equal(socket.close_calls, 0);
      assert.equal(sockets().length, 1);
      client.close();
    });

    it('at most one heartbeat interval runs, across many reconnections', () => {
      const {client} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      for (let i = 0; i < 5; i += 1) {
        last_socket().open();
        assert.equal(live.intervals.size, 1);
        tick(2500);
        last_socket().drop();
        assert.equal(live.intervals.size, 0);
        tick(30000);
      }
      assert.equal(sockets().length, 6);
      assert.equal(live.max_intervals, 1);
      client.close();
    });
  });

  describe('reconnection', () => {
    it('backoff_delay doubles from 500 ms, is capped at 30 s, with jitter between half and all of it', () => {
      const ceilings = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
      ceilings.forEach((ceiling, i) => {
        assert.equal(WS4Redis.backoff_delay(i + 1, 0), ceiling / 2);
        assert.equal(WS4Redis.backoff_delay(i + 1, 0.5), ceiling * 0.75);
        const high = WS4Redis.backoff_delay(i + 1, 0.999999);
        assert.ok(high < ceiling && high > ceiling * 0.99, `attempt ${i + 1}: ${high}`);
      });
      for (const attempt of [50, 1000, 1e9, Infinity]) {
        assert.ok(WS4Redis.backoff_delay(attempt, 0.999999) <= 30000);
      }
      for (let i = 0; i < 1000; i += 1) {
        const delay = WS4Redis.backoff_delay(1 + (i % 12), Math.random());
        assert.ok(delay >= 250 && delay <= 30000);
      }
    });

    it('reconnects after a close with growing delays, capped at 30 s', () => {
      const {client, log} = make_client();
      // Math.random() is 0.5: each delay is 3/4 of its ceiling.
      const expected = [375, 750, 1500, 3000, 6000, 12000, 22500, 22500, 22500];
      for (const delay of expected) {
        const count = sockets().length;
        last_socket().drop();   // the connection attempt fails
        tick(delay - 1);
        assert.equal(sockets().length, count, `no reconnection before ${delay} ms`);
        tick(1);
        assert.equal(sockets().length, count + 1, `reconnection after ${delay} ms`);
      }
      assert.equal(log.filter(([name]) => name === 'connecting').length, expected.length + 1);
      assert.equal(log.filter(([name]) => name === 'disconnected').length, expected.length);
      assert.ok(sockets().every((s) => s.url === sockets()[0].url));
      client.close();
    });

    it('never waits more than 30 s, even with the largest jitter', () => {
      Math.random.mock.mockImplementation(() => 0.999999);
      const {client} = make_client();
      for (let i = 1; i <= 20; i += 1) {
        last_socket().drop();
        tick(30000);
        assert.equal(sockets().length, i + 1);
      }
      client.close();
    });

    it('restarts from the shortest delay after a successful connection', () => {
      const {client} = make_client();
      for (let i = 0; i < 6; i += 1) {
        last_socket().drop();
        tick(30000);
      }
      last_socket().open();
      last_socket().drop();
      const count = sockets().length;
      tick(375);
      assert.equal(sockets().length, count + 1);
      client.close();
    });
  });

  describe('close()', () => {
    it('closes the socket, stops the heartbeat and never reconnects', () => {
      const {client, log} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      const socket = last_socket();
      socket.open();
      tick(1000);
      client.close();
      assert.equal(socket.close_calls, 1);
      assert.ok(client.is_closing());
      assert.equal(live_timers(), 0, 'no timer left after close()');
      socket.finish_close();
      assert.ok(client.is_closed());
      assert.deepEqual(log.at(-1), ['disconnected', 1000]);
      assert.equal(live_timers(), 0, 'no reconnection scheduled by the final close event');
      tick(120000);
      assert.deepEqual(socket.sent, ['hb']);
      assert.equal(sockets().length, 1);
      assert.equal(live_timers(), 0);
    });

    it('cancels a pending reconnection', () => {
      const {client} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      last_socket().open();
      last_socket().drop();
      assert.equal(live.timeouts.size, 1, 'a reconnection is pending');
      client.close();
      assert.equal(live_timers(), 0);
      tick(120000);
      assert.equal(sockets().length, 1);
      assert.ok(client.is_closed());
    });

    it('while connecting, the socket never counts as connected', () => {
      const {client, log} = make_client({heartbeat_msg: 'hb', heartbeat_interval: 1000});
      const socket = last_socket();
      client.close();
      socket.open();   // a fake opening anyway
      tick(120000);
      assert.deepEqual(log, [['connecting']]);
      assert.deepEqual(socket.sent, []);
      assert.equal(sockets().length, 1);
      assert.equal(live_timers(), 0);
    });

    it('can be called twice', () => {
      const {client} = make_client();
      last_socket().open();
      client.close();
      client.close();
      assert.equal(last_socket().close_calls, 1);
      last_socket().finish_close();
      client.close();
      assert.equal(live_timers(), 0);
    });
  });
});
