// tinywasm: write tinywasm-wasi modules in AssemblyScript (guest interface version 2,
// docs/abi.md; a module that never calls messageSender imports only version 1). Import it as "tinywasm" (`asc --path <sdk>/assemblyscript`) and re-export
// the allocator from your entry file:
//
//     import { subscribe, publish, text } from "tinywasm";
//     export { malloc, free } from "tinywasm";
//     export function init(): void { subscribe("ping"); }
//     export function on_message(ptr: usize, len: i32): void { publish("pong", bytes(ptr, len)); }
//
// Build with `--use abort=` (tinywasm build does): AssemblyScript's default `env.abort` import
// is not part of the guest interface, so a module importing it is refused.

// @ts-ignore: decorator
@external("env", "publish")
declare function hostPublish(topic: usize, topicLen: i32, payload: usize, payloadLen: i32): void;
// @ts-ignore: decorator
@external("env", "subscribe")
declare function hostSubscribe(topic: usize, topicLen: i32, handlerIdx: i32): void;
// @ts-ignore: decorator
@external("env", "unsubscribe")
declare function hostUnsubscribe(topic: usize, topicLen: i32): void;
// @ts-ignore: decorator
@external("env", "ws_broadcast")
declare function hostWsBroadcast(topic: usize, topicLen: i32, payload: usize, payloadLen: i32): void;
// @ts-ignore: decorator
@external("env", "log")
declare function hostLog(msg: usize, msgLen: i32): void;
// @ts-ignore: decorator
@external("env", "message_sender")
declare function hostMessageSender(buf: usize, bufLen: i32): i32; // version 2

export const ABI_VERSION: i32 = 2;

function utf8(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

/** Publish `payload` on the concrete bus topic `topic` (no wildcards). */
export function publish(topic: string, payload: Uint8Array): void {
  const t = utf8(topic);
  hostPublish(changetype<usize>(t), t.byteLength, payload.dataStart, payload.length);
}

/** Publish a text payload. */
export function publishText(topic: string, payload: string): void {
  publish(topic, Uint8Array.wrap(utf8(payload)));
}

/** Subscribe to a topic pattern (`*` one token, `>` the rest). */
export function subscribe(pattern: string): void {
  const t = utf8(pattern);
  hostSubscribe(changetype<usize>(t), t.byteLength, 0);
}

/** Remove the subscription to exactly this pattern. */
export function unsubscribe(pattern: string): void {
  const t = utf8(pattern);
  hostUnsubscribe(changetype<usize>(t), t.byteLength);
}

/** Send `payload` as one binary frame to every WebSocket client on `topic`. */
export function wsBroadcast(topic: string, payload: Uint8Array): void {
  const t = utf8(topic);
  hostWsBroadcast(changetype<usize>(t), t.byteLength, payload.dataStart, payload.length);
}

/** Write one line to the server log, tagged with the module name. */
export function log(line: string): void {
  const t = utf8(line);
  hostLog(changetype<usize>(t), t.byteLength);
}

/** Version 2: who published the message being delivered (`user:<sub>`, `conn:c<N>`,
 *  `module:<name>`), or null outside a delivery and for the server's own messages.
 *  The host sets it: a publisher cannot forge it. A module that calls it needs a
 *  version-2 server; one that does not imports nothing new. */
export function messageSender(): string | null {
  let buf = new Uint8Array(256);
  let n = hostMessageSender(buf.dataStart, buf.length);
  if (n < 0) return null;
  if (n > buf.length) {
    buf = new Uint8Array(n);
    n = hostMessageSender(buf.dataStart, buf.length);
    if (n < 0 || n > buf.length) return null;
  }
  return String.UTF8.decodeUnsafe(buf.dataStart, n);
}

/** A copy of the `len` bytes the host placed at `ptr` for this call. */
export function bytes(ptr: usize, len: i32): Uint8Array {
  const out = new Uint8Array(len);
  memory.copy(out.dataStart, ptr, len);
  return out;
}

/** The UTF-8 text the host placed at `ptr` for this call. */
export function text(ptr: usize, len: i32): string {
  return String.UTF8.decodeUnsafe(ptr, len);
}

/** A block as one i64 result: pointer in the high 32 bits, length in the low 32. */
export function pack(ptr: usize, len: i32): u64 {
  return ((<u64>ptr) << 32) | <u64>(<u32>len);
}

// -- the allocator: raw blocks from the runtime's heap, outside the garbage collector -------

/** Export it from your entry file: `export { malloc, free } from "tinywasm";` */
export function malloc(size: usize): usize {
  return heap.alloc(size);
}

export function free(ptr: usize): void {
  heap.free(ptr);
}

// Answers handed to the host stay referenced here until the next answer of their kind.
let keptAnswer: Uint8Array = new Uint8Array(0);
let keptState: Uint8Array = new Uint8Array(0);
let keptText: ArrayBuffer = new ArrayBuffer(0);

function keepAnswer(b: Uint8Array): u64 {
  keptAnswer = b;
  return pack(b.dataStart, b.length);
}

// -- state handoff: the SDK state envelope (version tag, 4 bytes little-endian, then data) --

/** save_state's result: `data` tagged `version`. */
export function saveState(version: u32, data: Uint8Array): u64 {
  const out = new Uint8Array(4 + data.length);
  store<u32>(out.dataStart, version);
  out.set(data, 4);
  keptState = out;
  return pack(out.dataStart, out.length);
}

/** restore_state's result: the state was taken, or rejected (the host logs it as dropped). */
export const STATE_TAKEN: i32 = 0;
export const STATE_REJECTED: i32 = 1;

/** restore_state's bytes read back: `tagged` is false if they are too short for a tag. */
export class State {
  constructor(public tagged: bool, public version: u32, public data: Uint8Array) {}
}

export function openState(ptr: usize, len: i32): State {
  if (len < 4) return new State(false, 0, bytes(ptr, len));
  return new State(true, load<u32>(ptr), bytes(ptr + 4, len - 4));
}

// -- HTTP (docs/http.md) -----------------------------------------------------------------

/** Compat mode: `handle`'s result for `body` (a NUL-terminated copy). */
export function compatAnswer(body: string): usize {
  keptText = String.UTF8.encode(body, true);
  return changetype<usize>(keptText);
}

/** Compat mode: the request's method and path, as [method, path]. */
export function compatRequest(ptr: usize, len: i32): string[] {
  const lines = text(ptr, len).split("\n");
  return [lines.length > 0 ? lines[0] : "", lines.length > 1 ? lines[1] : ""];
}

export class Header {
  constructor(public name: string, public value: string) {}
}

/** A full-mode request. */
export class Request {
  method: string = "";
  path: string = "";
  route: string = "";
  query: string = "";
  headers: Header[] = [];
  body: Uint8Array = new Uint8Array(0);

  /** The value of header `name` (lower case), or null. */
  header(name: string): string | null {
    for (let i = 0; i < this.headers.length; i++) {
      if (this.headers[i].name == name) return this.headers[i].value;
    }
    return null;
  }
}

class Reader {
  at: usize;
  constructor(public start: usize, public end: usize) {
    this.at = start;
  }
  ok: bool = true;
  major: u8 = 0;

  byte(): u8 {
    if (this.at >= this.end) {
      this.ok = false;
      return 0;
    }
    const b = load<u8>(this.at);
    this.at += 1;
    return b;
  }

  head(): u64 {
    const first = this.byte();
    this.major = first >> 5;
    const info = first & 31;
    if (info < 24) return <u64>info;
    if (info > 27) {
      this.ok = false;
      return 0;
    }
    let n: u64 = 0;
    const size = 1 << (info - 24);
    for (let i = 0; i < size; i++) n = (n << 8) | <u64>this.byte();
    return n;
  }

  take(major: u8): usize {
    const n = this.head();
    if (this.major != major || n > <u64>(this.end - this.at)) {
      this.ok = false;
      return 0;
    }
    this.at += <usize>n;
    return <usize>n;
  }

  text(): string {
    const n = this.take(3);
    return this.ok ? String.UTF8.decodeUnsafe(this.at - n, n) : "";
  }

  skip(): void {
    const n = this.head();
    const major = this.major;
    if (major == 2 || major == 3) {
      if (n > <u64>(this.end - this.at)) this.ok = false;
      else this.at += <usize>n;
    } else if (major == 4 || major == 5) {
      const items = major == 5 ? n * 2 : n;
      for (let i: u64 = 0; i < items && this.ok; i++) this.skip();
    } else if (major == 6) this.skip();
  }
}

/** Read the CBOR request map at `ptr`; null if it is not one. */
export function parseRequest(ptr: usize, len: i32): Request | null {
  const r = new Reader(ptr, ptr + len);
  const req = new Request();
  const pairs = r.head();
  if (r.major != 5) return null;
  for (let i: u64 = 0; i < pairs && r.ok; i++) {
    const key = r.text();
    if (key == "method") req.method = r.text();
    else if (key == "path") req.path = r.text();
    else if (key == "route") req.route = r.text();
    else if (key == "query") req.query = r.text();
    else if (key == "body") {
      const n = r.take(2);
      if (r.ok) req.body = bytes(r.at - n, <i32>n);
    } else if (key == "headers") {
      const count = r.head();
      if (r.major != 5) return null;
      for (let j: u64 = 0; j < count && r.ok; j++) {
        const name = r.text();
        req.headers.push(new Header(name, r.text()));
      }
    } else r.skip();
  }
  return r.ok ? req : null;
}

class Writer {
  buf: Uint8Array = new Uint8Array(256);
  len: i32 = 0;

  push(b: u8): void {
    if (this.len == this.buf.length) {
      const bigger = new Uint8Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.len++] = b;
  }

  head(major: u8, n: u64): void {
    const m: u8 = major << 5;
    if (n < 24) this.push(m | <u8>n);
    else if (n < 0x100) {
      this.push(m | 24);
      this.push(<u8>n);
    } else if (n < 0x10000) {
      this.push(m | 25);
      this.push(<u8>(n >> 8));
      this.push(<u8>n);
    } else {
      this.push(m | 26);
      for (let s = 24; s >= 0; s -= 8) this.push(<u8>(n >> s));
    }
  }

  raw(data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) this.push(data[i]);
  }

  text(s: string): void {
    const b = Uint8Array.wrap(String.UTF8.encode(s));
    this.head(3, b.length);
    this.raw(b);
  }

  done(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

/** A full-mode answer: `Response.text(...)`, `Response.bytes(...)`, `Response.json(...)`,
 *  or `Response.next()` from a middleware; add headers with `.header(name, value)`. */
export class Response {
  status: i32 = 200;
  headers: Header[] = [];
  body: Uint8Array | null = null;
  isText: bool = false;
  isNext: bool = false;

  static text(status: i32, body: string): Response {
    const r = new Response();
    r.status = status;
    r.body = Uint8Array.wrap(String.UTF8.encode(body));
    r.isText = true;
    return r;
  }

  static bytes(status: i32, body: Uint8Array): Response {
    const r = new Response();
    r.status = status;
    r.body = body;
    return r;
  }

  static json(body: string): Response {
    return Response.bytes(200, Uint8Array.wrap(String.UTF8.encode(body))).header(
      "content-type",
      "application/json",
    );
  }

  static next(): Response {
    const r = new Response();
    r.isNext = true;
    return r;
  }

  header(name: string, value: string): Response {
    this.headers.push(new Header(name.toLowerCase(), value));
    return this;
  }
}

/** handle_http's result for `answer` (null: no answer). */
export function answer(a: Response | null): u64 {
  if (a == null) return 0;
  const w = new Writer();
  const body = a.body;
  const hasBody = !a.isNext && body != null;
  w.head(5, 1 + (a.headers.length > 0 ? 1 : 0) + (hasBody ? 1 : 0));
  if (a.isNext) {
    w.text("next");
    w.push(0xf5);
  } else {
    w.text("status");
    w.head(0, <u64>a.status);
  }
  if (a.headers.length > 0) {
    const names: string[] = [];
    for (let i = 0; i < a.headers.length; i++) {
      if (!names.includes(a.headers[i].name)) names.push(a.headers[i].name);
    }
    w.text("headers");
    w.head(5, names.length);
    for (let i = 0; i < names.length; i++) {
      const values: string[] = [];
      for (let j = 0; j < a.headers.length; j++) {
        if (a.headers[j].name == names[i]) values.push(a.headers[j].value);
      }
      w.text(names[i]);
      if (values.length > 1) w.head(4, values.length);
      for (let j = 0; j < values.length; j++) w.text(values[j]);
    }
  }
  if (hasBody) {
    w.text("body");
    const b = body!;
    w.head(a.isText ? 3 : 2, b.length);
    w.raw(b);
  }
  return keepAnswer(w.done());
}

/** Escape `s` as a JSON string, quotes included. */
export function jsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c < 0x20) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
    else out += String.fromCharCode(c);
  }
  return out + '"';
}
