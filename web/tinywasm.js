// tinywasm.js: the browser client for a tinywasm-wasi server's WebSocket hub (/ws).
//
//   import { connect } from "/tinywasm.js";
//   const client = connect("/ws", { topics: ["chat"] });
//   client.subscribe("chat", (msg) => console.log(msg.topic, msg.text()));
//   client.publish("chat", "hello");
//   client.onState((s) => console.log(s.state, s.words));
//
// One WebSocket per client. The hub takes a connection's topics from its URL
// (/ws?topic=a&topic=b), so subscribing to a pattern the connection does not
// cover yet reconnects it with the new set (frames broadcast during that
// reconnect are not seen, except on topics with history: recovered, below). With `envelope: "cbor"` (the default) every frame is a
// CBOR map {topic, type, id, payload}, decoded with the vendored cbor-x, and each
// message goes to the handlers whose pattern matches its topic (`*` one token,
// `>` the rest). With `envelope: "raw"` frames carry only the payload, so every
// handler gets every frame, with `topic` set to the connection's first topic.
//
// A connection that drops is reopened after a jittered, doubling delay
// (minDelay .. maxDelay ms) and subscribes again to everything it had.
//
// Recovery (envelope mode, topics the server keeps history for, --history): the client
// remembers each topic's last offset and epoch and reconnects with since=, so the
// server sends what was broadcast meanwhile, then live messages: no gap, no duplicate.
// `recovered` says whether the last reconnect got everything back (false: the position
// was too old or the server restarted; what was missed is gone).
//
// Tokens: with `getToken` (a function returning a JWT, or a promise of one) each
// connection asks it for a token, sent as the `tinywasm.jwt` WebSocket subprotocol
// (never in the URL). A close with 3000 "token expired" asks again and reconnects at
// once, recovering what was missed.
//
// Presence (envelope mode): with `presence: true` the connection asks for join and
// leave frames on its topics (presence=1); `onPresence(listener)` gets each as
// {kind: "join" | "leave", topic, user, conn}. Message handlers never see them.
// Plain ES module, no build step.

import { Decoder } from "./vendor/cbor-x/decode.js";
import { Encoder } from "./vendor/cbor-x/encode.js";

const cborOptions = { useRecords: false, mapsAsObjects: true, tagUint8Array: false, variableMapSize: true };
const decoder = new Decoder(cborOptions);
const encoder = new Encoder(cborOptions);
const utf8 = new TextDecoder(); // invalid UTF-8 reads as U+FFFD, never throws
const utf8Encoder = new TextEncoder();

/** Close codes the server sends (and the browser reports), in words. */
export const CLOSE_CODES = Object.freeze({
  1000: "closed normally",
  1001: "server going away",
  1002: "protocol error",
  1005: "closed without a code",
  1006: "connection lost",
  1007: "invalid data",
  1008: "not allowed",
  1009: "message too big",
  1011: "server error",
  1012: "server restarting",
  1013: "slow consumer",
  3000: "token expired",
});

/** The frame type of a topic's position frame (the first per topic with history). */
export const POSITION_FRAME = 1;
/** The frame types of presence events (presence: true): a connection joined or left a topic. */
export const JOIN_FRAME = 2;
export const LEAVE_FRAME = 3;
const TOKEN_EXPIRED = 3000;
const TOKEN_PROTOCOL = "tinywasm.jwt";

/** Words for a WebSocket close code: "slow consumer" for 1013, and so on. */
export function closeWords(code) {
  if (code in CLOSE_CODES) return CLOSE_CODES[code];
  if (code >= 3000 && code < 4000) return "refused by the server (" + code + ")";
  if (code >= 4000 && code < 5000) return "closed by the application (" + code + ")";
  return "closed (" + code + ")";
}

/** Whether `topic` matches the subscription `pattern` (`*` one token, `>` one or more). */
export function matches(pattern, topic) {
  if (pattern === topic) return true;
  const want = pattern.split(".");
  const have = topic.split(".");
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ">") return have.length > i;
    if (i >= have.length) return false;
    if (want[i] !== "*" && want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

/**
 * Why `pattern` is not a subscription pattern the server accepts, or null when it is.
 * Tokens are separated by dots and non-empty; `*` and `>` are whole tokens, `>` last.
 */
export function patternError(pattern) {
  if (typeof pattern !== "string" || !pattern) return "a pattern is non-empty text";
  if (new TextEncoder().encode(pattern).length > 255) return "a pattern is at most 255 bytes";
  if (/[\s\x00-\x1f\x7f-\x9f]/.test(pattern)) return "a pattern has no white space or control characters";
  const tokens = pattern.split(".");
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (!token) return "dots separate non-empty tokens";
    if (token !== "*" && token !== ">" && /[*>]/.test(token)) return "a wildcard (* or >) must be a whole token";
    if (token === ">" && i !== tokens.length - 1) return "'>' may only be the last token";
  }
  return null;
}

function toBytes(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  if (typeof payload === "string") return utf8Encoder.encode(payload);
  throw new TypeError("publish: the payload must be a string, Uint8Array or ArrayBuffer");
}

/** One message received: its topic, payload bytes, type and id, and ways to read it. */
export class TinyMessage {
  constructor(topic, payload, type = 0, id = 0, offset = null, epoch = null) {
    this.topic = topic;
    this.payload = payload;
    this.type = type;
    this.id = id;
    this.offset = offset; // its place in the topic's history (null: the topic keeps none)
    this.epoch = epoch;
  }
  /** The payload as UTF-8 text. */
  text() {
    return utf8.decode(this.payload);
  }
  /** The payload parsed as JSON (throws SyntaxError when it is not). */
  json() {
    return JSON.parse(this.text());
  }
}

function resolveUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const full = new URL(url || "/ws", base);
  if (full.protocol === "http:") full.protocol = "ws:";
  if (full.protocol === "https:") full.protocol = "wss:";
  full.search = "";
  return full;
}

/** A connection to the hub; see `connect`. */
export class TinyClient {
  constructor(url, options = {}) {
    const envelope = options.envelope === undefined ? "cbor" : options.envelope;
    if (envelope !== "cbor" && envelope !== "raw") {
      throw new TypeError('envelope must be "cbor" or "raw", not ' + JSON.stringify(envelope));
    }
    this.url = resolveUrl(url);
    this.envelope = envelope;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new TypeError("getToken must be a function returning a token (or a promise of one)");
    }
    this.getToken = options.getToken || null;
    this.presence = Boolean(options.presence);
    if (this.presence && envelope !== "cbor") {
      throw new TypeError('presence needs envelope "cbor": raw frames cannot tell a join from a message');
    }
    this._presenceListeners = new Set();
    this.state = "idle";
    // Recovery: topic -> {offset, epoch} of the last message seen; whether the last
    // reconnect recovered everything (null until a reconnect asked for it).
    this._positions = new Map();
    this._asked = null; // topics the current connection asked to recover
    this.recovered = null;
    this._recoverListeners = new Set();
    this._opening = 0; // which _open is current (a token may arrive after a newer one)
    this._awaiting = null; // the topics of an _open waiting for getToken
    this._handlers = new Map(); // pattern -> Set of handlers
    this._topics = []; // the patterns of the connection, in order
    this._stateListeners = new Set();
    this._socket = null;
    this._timer = null;
    this._delay = this.minDelay;
    this._closed = false;
    this._reconnectSoon = false;
    this.attempts = 0;
    for (const topic of options.topics || []) this._want(topic);
    if (options.onState) this.onState(options.onState);
    if (this._topics.length) this._open();
  }

  /** Call `handler(message)` for each message on a topic matching `pattern`; returns an undo. */
  subscribe(pattern, handler) {
    if (typeof handler !== "function") throw new TypeError("subscribe needs a handler function");
    this._want(pattern).add(handler);
    this._sync();
    return () => this.unsubscribe(pattern, handler);
  }

  /** Stop calling `handler` for `pattern` (every handler of it when `handler` is omitted). */
  unsubscribe(pattern, handler) {
    const handlers = this._handlers.get(pattern);
    if (!handlers) return;
    if (handler) handlers.delete(handler);
    else handlers.clear();
    if (handlers.size === 0) {
      this._handlers.delete(pattern);
      this._topics = this._topics.filter((t) => t !== pattern);
      this._sync();
    }
  }

  /**
   * Send `payload` (text, bytes) on `topic`. Returns false when not connected.
   * The server publishes it only if `topic` is on its --ws-inbound list; otherwise it
   * closes the connection with 1008 ("not allowed"). In raw mode only the
   * connection's first topic can be published to.
   */
  publish(topic, payload) {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN || this._reconnectSoon) return false;
    const bytes = toBytes(payload);
    if (this.envelope === "cbor") {
      socket.send(encoder.encode({ topic: topic, type: 0, id: 0, payload: bytes }));
    } else {
      if (topic !== this._topics[0]) {
        throw new Error(
          'raw mode publishes only to the first topic ("' + this._topics[0] + '"); ' +
            'use envelope: "cbor" to publish to ' + JSON.stringify(topic),
        );
      }
      socket.send(typeof payload === "string" ? payload : bytes);
    }
    return true;
  }

  /**
   * Call `listener({topic, recovered, offset, epoch})` when a reconnect has asked the
   * server for what a topic missed and got its answer; returns an undo.
   */
  onRecover(listener) {
    this._recoverListeners.add(listener);
    return () => this._recoverListeners.delete(listener);
  }

  /**
   * Call `listener({kind, topic, user, conn})` for each join ("join") or leave ("leave") on
   * the connection's topics; needs `presence: true`. Returns an undo.
   */
  onPresence(listener) {
    this._presenceListeners.add(listener);
    return () => this._presenceListeners.delete(listener);
  }

  /** Each topic's last position seen: topic -> {offset, epoch} (topics with history only). */
  get positions() {
    return new Map(Array.from(this._positions, ([topic, at]) => [topic, Object.assign({}, at)]));
  }

  /** Call `listener({state, code, reason, words, retryIn})` on every state change; returns an undo. */
  onState(listener) {
    this._stateListeners.add(listener);
    return () => this._stateListeners.delete(listener);
  }

  /** The patterns the connection is subscribed to. */
  get topics() {
    return this._topics.slice();
  }

  /** Close for good: no reconnect. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this._socket) this._socket.close(1000, "client closed");
    this._setState({ state: "closed", code: 1000, reason: "", words: "closed by the page" });
  }

  _want(pattern) {
    if (typeof pattern !== "string" || !pattern) throw new TypeError("a topic pattern must be non-empty text");
    let handlers = this._handlers.get(pattern);
    if (!handlers) {
      handlers = new Set();
      this._handlers.set(pattern, handlers);
      this._topics.push(pattern);
    }
    return handlers;
  }

  // After the topics changed: reconnect once, at the end of the current task, so a
  // run of subscribe() calls costs one reconnect.
  _sync() {
    if (this._closed || this._reconnectSoon) return;
    this._reconnectSoon = true;
    queueMicrotask(() => {
      this._reconnectSoon = false;
      if (this._closed) return;
      const socket = this._socket;
      const now = this._topics.join("\n");
      if (socket && socket._topics === now && socket.readyState <= WebSocket.OPEN) return;
      if (!socket && this._awaiting === now) return; // getToken is already working on it
      if (socket) {
        socket._replaced = true;
        socket.close(1000, "topics changed");
      }
      clearTimeout(this._timer);
      this._socket = null;
      this._delay = this.minDelay;
      if (this._topics.length) this._open();
      else this._setState({ state: "idle", code: 0, reason: "", words: "no topics" });
    });
  }

  _open() {
    this.attempts += 1;
    this._setState({ state: "connecting", code: 0, reason: "", words: "connecting" });
    const opening = ++this._opening;
    this._awaiting = null;
    if (!this.getToken) {
      this._connect(null);
      return;
    }
    let pending;
    try {
      pending = Promise.resolve(this.getToken());
    } catch (error) {
      pending = Promise.reject(error);
    }
    this._awaiting = this._topics.join("\n");
    pending.then(
      (token) => {
        if (opening !== this._opening || this._closed) return;
        this._awaiting = null;
        if (typeof token !== "string" || !token) {
          this._retry(0, "getToken gave no token", "no token");
        } else {
          this._connect(token);
        }
      },
      (error) => {
        if (opening !== this._opening || this._closed) return;
        this._awaiting = null;
        this._retry(0, String(error && error.message ? error.message : error), "getToken failed");
      },
    );
  }

  // The connection's URL: its topics, the envelope, and since= for every topic it has a
  // position in (the server answers each with recovered true or false).
  _url() {
    const url = new URL(this.url);
    for (const topic of this._topics) url.searchParams.append("topic", topic);
    this._asked = new Set();
    if (this.envelope === "cbor") {
      url.searchParams.set("envelope", "cbor");
      if (this.presence) url.searchParams.set("presence", "1");
      for (const topic of this._topics) {
        const at = this._positions.get(topic);
        if (!at) continue;
        url.searchParams.append("since", topic + ":" + at.offset + ":" + at.epoch);
        this._asked.add(topic);
      }
    }
    if (this._asked.size) this.recovered = null;
    return url;
  }

  _connect(token) {
    const url = this._url();
    const socket = token ? new WebSocket(url.href, [TOKEN_PROTOCOL, token]) : new WebSocket(url.href);
    socket.binaryType = "arraybuffer";
    socket._topics = this._topics.join("\n");
    this._socket = socket;
    socket.onopen = () => {
      if (socket !== this._socket) return;
      this._delay = this.minDelay;
      this._setState({ state: "connected", code: 0, reason: "", words: "connected" });
    };
    socket.onmessage = (event) => {
      if (socket === this._socket) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (socket !== this._socket || socket._replaced) return;
      this._socket = null;
      if (this._closed) return;
      // A token that expired: a new one, at once (getToken decides how fast that is).
      const expired = event.code === TOKEN_EXPIRED && this.getToken;
      this._retry(event.code, event.reason, closeWords(event.code), expired);
    };
  }

  // Reopen after a jittered, doubling delay (many pages dropped at once do not all
  // return at once); `now` skips the delay.
  _retry(code, reason, words, now = false) {
    clearTimeout(this._timer);
    let wait = 0;
    if (!now) {
      wait = Math.round(this._delay * (0.5 + Math.random()));
      this._delay = Math.min(this._delay * 2, this.maxDelay);
    }
    this._timer = setTimeout(() => this._open(), wait);
    this._setState({ state: "closed", code: code, reason: reason, words: words, retryIn: wait });
  }

  _receive(data) {
    let message;
    if (this.envelope === "cbor") {
      let obj;
      try {
        obj = decoder.decode(new Uint8Array(data));
      } catch (error) {
        console.warn("tinywasm: a frame is not a CBOR envelope:", error.message);
        return;
      }
      const payload = typeof obj.payload === "string" ? utf8Encoder.encode(obj.payload) : obj.payload;
      const offset = typeof obj.offset === "number" ? obj.offset : null;
      const epoch = offset === null ? null : String(obj.epoch);
      if (obj.type === POSITION_FRAME) {
        this._position(obj.topic, offset, epoch, obj.recovered);
        return; // the topic's position, not a message
      }
      if (obj.type === JOIN_FRAME || obj.type === LEAVE_FRAME) {
        const event = {
          kind: obj.type === JOIN_FRAME ? "join" : "leave",
          topic: obj.topic,
          user: obj.user ?? null,
          conn: obj.conn ?? null,
        };
        for (const listener of this._presenceListeners) {
          try {
            listener(event);
          } catch (error) {
            console.error("tinywasm: a presence listener threw:", error);
          }
        }
        return; // a join or leave, not a message
      }
      if (offset !== null) {
        const at = this._positions.get(obj.topic);
        // Seen already (the server sends none twice; this guards a topic whose epoch
        // this client saw from two connections at once).
        if (at && at.epoch === epoch && offset <= at.offset) return;
        this._positions.set(obj.topic, { offset: offset, epoch: epoch });
      }
      message = new TinyMessage(
        obj.topic, new Uint8Array(payload || []), obj.type || 0, obj.id || 0, offset, epoch,
      );
    } else {
      const payload = typeof data === "string" ? utf8Encoder.encode(data) : new Uint8Array(data);
      message = new TinyMessage(this._topics[0], payload);
    }
    for (const [pattern, handlers] of this._handlers) {
      if (this.envelope === "raw" || matches(pattern, message.topic)) {
        for (const handler of handlers) {
          try {
            handler(message);
          } catch (error) {
            console.error("tinywasm: a handler for", pattern, "threw:", error);
          }
        }
      }
    }
  }

  // A position frame: where the topic is now, and whether what it missed is on its way.
  _position(topic, offset, epoch, recovered) {
    if (offset === null) return;
    const asked = this._asked && this._asked.has(topic);
    if (!asked || recovered !== true) {
      // A fresh start (no since=), or a position the server could not serve: from now on.
      this._positions.set(topic, { offset: offset, epoch: epoch });
    }
    if (!asked) return;
    this._asked.delete(topic);
    this.recovered = recovered === true && this.recovered !== false;
    const event = { topic: topic, recovered: recovered === true, offset: offset, epoch: epoch };
    for (const listener of this._recoverListeners) {
      try {
        listener(event);
      } catch (error) {
        console.error("tinywasm: an onRecover listener threw:", error);
      }
    }
  }

  _setState(change) {
    this.state = change.state;
    const event = Object.assign({ retryIn: 0, attempts: this.attempts }, change);
    for (const listener of this._stateListeners) {
      try {
        listener(event);
      } catch (error) {
        console.error("tinywasm: an onState listener threw:", error);
      }
    }
  }
}

/**
 * Connect to the hub at `url` (default "/ws" on this page's host; http(s) URLs work too).
 * Options: topics (patterns to subscribe to at once), envelope ("cbor", the default, or
 * "raw"), minDelay and maxDelay (reconnect backoff in ms), onState (a state listener),
 * getToken (a function returning a JWT or a promise of one: asked on every connect and
 * after a 3000 "token expired" close).
 */
export function connect(url, options) {
  return new TinyClient(url, options);
}
