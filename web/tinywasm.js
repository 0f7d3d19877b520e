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
// reconnect are not seen). With `envelope: "cbor"` (the default) every frame is a
// CBOR map {topic, type, id, payload}, decoded with the vendored cbor-x, and each
// message goes to the handlers whose pattern matches its topic (`*` one token,
// `>` the rest). With `envelope: "raw"` frames carry only the payload, so every
// handler gets every frame, with `topic` set to the connection's first topic.
//
// A connection that drops is reopened after a jittered, doubling delay
// (minDelay .. maxDelay ms) and subscribes again to everything it had.
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
});

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
  constructor(topic, payload, type = 0, id = 0) {
    this.topic = topic;
    this.payload = payload;
    this.type = type;
    this.id = id;
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
    this.state = "idle";
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
    const url = new URL(this.url);
    for (const topic of this._topics) url.searchParams.append("topic", topic);
    if (this.envelope === "cbor") url.searchParams.set("envelope", "cbor");
    this.attempts += 1;
    this._setState({ state: "connecting", code: 0, reason: "", words: "connecting" });
    const socket = new WebSocket(url.href);
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
      // Jittered, doubling backoff: many pages dropped at once do not all return at once.
      const wait = Math.round(this._delay * (0.5 + Math.random()));
      this._delay = Math.min(this._delay * 2, this.maxDelay);
      this._timer = setTimeout(() => this._open(), wait);
      this._setState({
        state: "closed",
        code: event.code,
        reason: event.reason,
        words: closeWords(event.code),
        retryIn: wait,
      });
    };
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
      message = new TinyMessage(obj.topic, new Uint8Array(payload), obj.type || 0, obj.id || 0);
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
 * "raw"), minDelay and maxDelay (reconnect backoff in ms), onState (a state listener).
 */
export function connect(url, options) {
  return new TinyClient(url, options);
}
