//! tinywasm: write tinywasm-wasi modules in Zig (guest interface version 2, docs/abi.md).
//!
//!     const tw = @import("tinywasm");
//!     comptime { tw.exportAllocator(); }          // malloc and free for the host
//!     export fn init() void { tw.subscribe("ping"); }
//!     export fn on_message(ptr: [*]const u8, len: u32) void {
//!         tw.publish("pong", tw.bytes(ptr, len));
//!     }
//!
//! Build (tinywasm build does this):
//!     zig build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -rdynamic \
//!         -O ReleaseSmall --dep tinywasm -Mroot=main.zig -Mtinywasm=<sdk>/zig/tinywasm.zig
const std = @import("std");

pub const abi_version = 2;

const host = struct {
    extern "env" fn publish(topic: [*]const u8, topic_len: u32, payload: [*]const u8, payload_len: u32) void;
    extern "env" fn subscribe(topic: [*]const u8, topic_len: u32, handler_idx: u32) void;
    extern "env" fn unsubscribe(topic: [*]const u8, topic_len: u32) void;
    extern "env" fn ws_broadcast(topic: [*]const u8, topic_len: u32, payload: [*]const u8, payload_len: u32) void;
    extern "env" fn log(msg: [*]const u8, msg_len: u32) void;
    extern "env" fn message_sender(buf: [*]u8, buf_len: u32) i32; // version 2
};

/// Publish `payload` on the concrete bus topic `topic` (no wildcards).
pub fn publish(topic: []const u8, payload: []const u8) void {
    host.publish(topic.ptr, @intCast(topic.len), payload.ptr, @intCast(payload.len));
}

/// Subscribe to a topic pattern (`*` one token, `>` the rest). Twice is a no-op.
pub fn subscribe(pattern: []const u8) void {
    host.subscribe(pattern.ptr, @intCast(pattern.len), 0);
}

/// Remove the subscription to exactly this pattern.
pub fn unsubscribe(pattern: []const u8) void {
    host.unsubscribe(pattern.ptr, @intCast(pattern.len));
}

/// Send `payload` as one binary frame to every WebSocket client on `topic`.
pub fn wsBroadcast(topic: []const u8, payload: []const u8) void {
    host.ws_broadcast(topic.ptr, @intCast(topic.len), payload.ptr, @intCast(payload.len));
}

/// Write one line to the server log, tagged with the module name.
pub fn log(line: []const u8) void {
    host.log(line.ptr, @intCast(line.len));
}

/// Version 2: who published the message being delivered ("user:<sub>", "conn:c<N>",
/// "module:<name>"), copied into `buf`; null outside a delivery and for the server's own
/// messages. The host sets it: a publisher cannot forge it. error.SenderTooLong when it
/// does not fit in `buf` (never cut: a cut sender could be another's prefix). A module
/// that calls it needs a version-2 server; one that does not imports nothing new.
pub fn messageSender(buf: []u8) error{SenderTooLong}!?[]const u8 {
    const n = host.message_sender(buf.ptr, @intCast(buf.len));
    if (n < 0) return null;
    const len: usize = @intCast(n);
    if (len > buf.len) return error.SenderTooLong;
    return buf[0..len];
}

/// The bytes the host placed at `ptr` for this call (valid only during the call).
pub fn bytes(ptr: [*]const u8, len: u32) []const u8 {
    return ptr[0..len];
}

/// A block as one i64 result: pointer in the high 32 bits, length in the low 32.
pub fn pack(block: []const u8) u64 {
    return @as(u64, @intFromPtr(block.ptr)) << 32 | @as(u64, @as(u32, @intCast(block.len)));
}

/// Decimal text of `n` in `buf` (20 bytes are enough for any u64).
pub fn decimal(buf: []u8, n: u64) []const u8 {
    var digits: [20]u8 = undefined;
    var i: usize = digits.len;
    var v = n;
    while (true) {
        i -= 1;
        digits[i] = @intCast('0' + v % 10);
        v /= 10;
        if (v == 0) break;
    }
    const len = digits.len - i;
    @memcpy(buf[0..len], digits[i..]);
    return buf[0..len];
}

// -- the allocator -----------------------------------------------------------------------

const allocator = std.heap.wasm_allocator;

/// Each block starts with its size in 8-byte words, so free() needs only the pointer.
fn malloc(size: u32) callconv(.c) u32 {
    const words = (@as(usize, size) + 7) / 8 + 1;
    const block = allocator.alloc(u64, words) catch return 0;
    block[0] = words;
    return @intCast(@intFromPtr(block.ptr) + 8);
}

fn free(ptr: u32) callconv(.c) void {
    if (ptr == 0) return;
    const start: [*]u64 = @ptrFromInt(ptr - 8);
    allocator.free(start[0..@intCast(start[0])]);
}

/// Export `malloc` and `free` for the host: `comptime { tw.exportAllocator(); }`.
pub inline fn exportAllocator() void {
    @export(&malloc, .{ .name = "malloc" });
    @export(&free, .{ .name = "free" });
}

/// A fixed buffer that refuses to overflow (`over` is set instead).
pub const Buffer = struct {
    data: []u8,
    len: usize = 0,
    over: bool = false,

    pub fn init(data: []u8) Buffer {
        return .{ .data = data };
    }

    pub fn put(self: *Buffer, s: []const u8) void {
        if (self.len + s.len > self.data.len) {
            self.over = true;
            return;
        }
        @memcpy(self.data[self.len..][0..s.len], s);
        self.len += s.len;
    }

    pub fn byte(self: *Buffer, b: u8) void {
        self.put(&[_]u8{b});
    }

    /// A JSON string: quotes, backslashes and control characters escaped.
    pub fn jsonString(self: *Buffer, s: []const u8) void {
        const hex = "0123456789abcdef";
        self.byte('"');
        for (s) |c| switch (c) {
            '"', '\\' => self.put(&[_]u8{ '\\', c }),
            0...0x1f => self.put(&[_]u8{ '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] }),
            else => self.byte(c),
        };
        self.byte('"');
    }

    pub fn slice(self: *const Buffer) []const u8 {
        return self.data[0..self.len];
    }
};

// -- state handoff: the SDK state envelope (version tag, 4 bytes little-endian, then data) --

pub const state = struct {
    var saved: [4096]u8 = undefined;

    /// save_state's result: `data` tagged `version` (at most 4092 bytes; more: 0, nothing).
    pub fn save(version: u32, data: []const u8) u64 {
        if (data.len + 4 > saved.len) return 0;
        std.mem.writeInt(u32, saved[0..4], version, .little);
        @memcpy(saved[4..][0..data.len], data);
        return pack(saved[0 .. 4 + data.len]);
    }

    pub const Saved = struct { version: u32, data: []const u8 };

    /// restore_state's result: the state was taken, or rejected (the host logs it).
    pub const taken: i32 = 0;
    pub const rejected: i32 = 1;

    /// restore_state's bytes read back; null if too short to carry a version tag.
    pub fn open(ptr: [*]const u8, len: u32) ?Saved {
        if (len < 4) return null;
        const b = ptr[0..len];
        return .{ .version = std.mem.readInt(u32, b[0..4], .little), .data = b[4..] };
    }
};

// -- HTTP (docs/http.md) -----------------------------------------------------------------

pub const http = struct {
    pub const Header = struct { name: []const u8, value: []const u8 };
    pub const max_headers = 32;

    /// A full-mode request; its slices point into the host's block (valid during the call).
    pub const Request = struct {
        method: []const u8 = "",
        path: []const u8 = "",
        route: []const u8 = "",
        query: []const u8 = "",
        body: []const u8 = "",
        headers: [max_headers]Header = undefined,
        header_count: usize = 0,

        /// The value of header `name` (lower case), or null.
        pub fn header(self: *const Request, name: []const u8) ?[]const u8 {
            for (self.headers[0..self.header_count]) |h| {
                if (std.mem.eql(u8, h.name, name)) return h.value;
            }
            return null;
        }
    };

    const Reader = struct {
        b: []const u8,
        at: usize = 0,

        fn head(self: *Reader, major: u8) !u64 {
            if (self.at >= self.b.len) return error.Malformed;
            const first = self.b[self.at];
            self.at += 1;
            if (first >> 5 != major) return error.Malformed;
            const info = first & 31;
            if (info < 24) return info;
            if (info > 27) return error.Malformed;
            const size = @as(usize, 1) << @intCast(info - 24);
            if (self.at + size > self.b.len) return error.Malformed;
            var n: u64 = 0;
            for (self.b[self.at..][0..size]) |c| n = n << 8 | c;
            self.at += size;
            return n;
        }

        fn take(self: *Reader, major: u8) ![]const u8 {
            const n = try self.head(major);
            if (n > self.b.len - self.at) return error.Malformed;
            const item = self.b[self.at..][0..@intCast(n)];
            self.at += @intCast(n);
            return item;
        }

        fn skip(self: *Reader) !void {
            if (self.at >= self.b.len) return error.Malformed;
            const major = self.b[self.at] >> 5;
            switch (major) {
                2, 3 => _ = try self.take(major),
                4, 5 => {
                    const n = try self.head(major);
                    var i: u64 = 0;
                    while (i < n * @as(u64, if (major == 5) 2 else 1)) : (i += 1) try self.skip();
                },
                6 => {
                    _ = try self.head(6);
                    try self.skip();
                },
                else => _ = try self.head(major),
            }
        }
    };

    /// Read the CBOR request map into `req`; false if it is not one.
    pub fn parse(ptr: [*]const u8, len: u32, req: *Request) bool {
        parseOrError(ptr[0..len], req) catch return false;
        return true;
    }

    fn parseOrError(b: []const u8, req: *Request) !void {
        req.* = .{};
        var r = Reader{ .b = b };
        const pairs = try r.head(5);
        var i: u64 = 0;
        while (i < pairs) : (i += 1) {
            const key = try r.take(3);
            if (std.mem.eql(u8, key, "method")) {
                req.method = try r.take(3);
            } else if (std.mem.eql(u8, key, "path")) {
                req.path = try r.take(3);
            } else if (std.mem.eql(u8, key, "route")) {
                req.route = try r.take(3);
            } else if (std.mem.eql(u8, key, "query")) {
                req.query = try r.take(3);
            } else if (std.mem.eql(u8, key, "body")) {
                req.body = try r.take(2);
            } else if (std.mem.eql(u8, key, "headers")) {
                const n = try r.head(5);
                var j: u64 = 0;
                while (j < n) : (j += 1) {
                    const h = Header{ .name = try r.take(3), .value = try r.take(3) };
                    if (req.header_count < max_headers) {
                        req.headers[req.header_count] = h;
                        req.header_count += 1;
                    }
                }
            } else try r.skip();
        }
    }

    var out: [8192]u8 = undefined;

    fn cborHead(w: *Buffer, major: u8, n: u64) void {
        const m: u8 = major << 5;
        if (n < 24) {
            w.byte(m | @as(u8, @intCast(n)));
        } else if (n < 0x100) {
            w.put(&[_]u8{ m | 24, @intCast(n) });
        } else if (n < 0x10000) {
            w.put(&[_]u8{ m | 25, @intCast(n >> 8), @truncate(n) });
        } else {
            w.put(&[_]u8{ m | 26, @truncate(n >> 24), @truncate(n >> 16), @truncate(n >> 8), @truncate(n) });
        }
    }

    fn cborText(w: *Buffer, s: []const u8) void {
        cborHead(w, 3, s.len);
        w.put(s);
    }

    fn putHeaders(w: *Buffer, headers: []const Header) void {
        var names: usize = 0;
        for (headers, 0..) |h, i| {
            if (firstOf(headers, i, h.name)) names += 1;
        }
        cborHead(w, 5, names);
        for (headers, 0..) |h, i| {
            if (!firstOf(headers, i, h.name)) continue;
            var count: usize = 0;
            for (headers) |o| count += @intFromBool(std.ascii.eqlIgnoreCase(o.name, h.name));
            cborText(w, h.name);
            if (count > 1) cborHead(w, 4, count);
            for (headers) |o| {
                if (std.ascii.eqlIgnoreCase(o.name, h.name)) cborText(w, o.value);
            }
        }
    }

    fn firstOf(headers: []const Header, i: usize, name: []const u8) bool {
        for (headers[0..i]) |o| {
            if (std.ascii.eqlIgnoreCase(o.name, name)) return false;
        }
        return true;
    }

    pub const BodyKind = enum { none, text, bytes };

    fn encode(pass_on: bool, status: u16, headers: []const Header, kind: BodyKind, body: []const u8) u64 {
        var w = Buffer.init(&out);
        const has_body = !pass_on and kind != .none;
        cborHead(&w, 5, 1 + @as(u64, @intFromBool(headers.len > 0)) + @intFromBool(has_body));
        if (pass_on) {
            cborText(&w, "next");
            w.byte(0xf5);
        } else {
            cborText(&w, "status");
            cborHead(&w, 0, status);
        }
        if (headers.len > 0) {
            cborText(&w, "headers");
            putHeaders(&w, headers);
        }
        if (has_body) {
            cborText(&w, "body");
            cborHead(&w, if (kind == .text) 3 else 2, body.len);
            w.put(body);
        }
        if (w.over) return encode(false, 500, &.{}, .text, "response buffer too small");
        return pack(w.slice());
    }

    /// Answer with `status`, `headers` and a text body.
    pub fn respondText(status: u16, headers: []const Header, body: []const u8) u64 {
        return encode(false, status, headers, .text, body);
    }

    /// Answer with `status`, `headers` and a byte body.
    pub fn respondBytes(status: u16, headers: []const Header, body: []const u8) u64 {
        return encode(false, status, headers, .bytes, body);
    }

    /// From a middleware: pass the request on with `headers` set on it.
    pub fn next(headers: []const Header) u64 {
        return encode(true, 0, headers, .none, "");
    }

    var compat_out: [4096]u8 = undefined;

    /// Compat mode: `handle`'s result for `body` (a NUL-terminated copy; cut at 4095 bytes).
    pub fn compatAnswer(body: []const u8) [*]const u8 {
        const n = @min(body.len, compat_out.len - 1);
        @memcpy(compat_out[0..n], body[0..n]);
        compat_out[n] = 0;
        return &compat_out;
    }
};
