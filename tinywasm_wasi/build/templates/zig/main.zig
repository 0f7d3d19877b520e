//! __NAME__: a tinywasm module in Zig. Every message on topic "__NAME__" goes back to the
//! browsers watching that topic, numbered. Edit and save: `tinywasm dev` rebuilds it and
//! swaps it in; the count survives the swap.
const std = @import("std");

extern "env" fn subscribe(topic: [*]const u8, topic_len: u32, flags: u32) void;
extern "env" fn ws_broadcast(topic: [*]const u8, topic_len: u32, data: [*]const u8, len: u32) void;
extern "env" fn log(msg: [*]const u8, len: u32) void;

const topic = "__NAME__";
const allocator = std.heap.wasm_allocator;
var count: u32 = 0;
var line: [256]u8 = undefined;
var saved: [2]u32 = undefined;

export fn init() void {
    subscribe(topic.ptr, topic.len, 0);
    const hello = "__NAME__ started";
    log(hello.ptr, hello.len);
}

export fn on_message(payload: [*]const u8, len: u32) void {
    count += 1;
    const text = std.fmt.bufPrint(&line, "#{d}: {s}", .{ count, payload[0..@min(len, 200)] }) catch return;
    ws_broadcast(topic.ptr, topic.len, text.ptr, text.len);
}

// The host's allocator calls: a length header in front of each block, so free needs no size.
export fn malloc(size: usize) ?[*]u8 {
    const block = allocator.alloc(u8, size + 8) catch return null;
    std.mem.writeInt(usize, block[0..@sizeOf(usize)], size + 8, .little);
    return block.ptr + 8;
}

export fn free(ptr: ?[*]u8) void {
    const p = ptr orelse return;
    const base = p - 8;
    const total = std.mem.readInt(usize, base[0..@sizeOf(usize)], .little);
    allocator.free(base[0..total]);
}

// The count, handed to the next version on a hot swap (version tag 1).
export fn save_state() u64 {
    saved = .{ 1, count };
    return (@as(u64, @intFromPtr(&saved)) << 32) | @sizeOf(@TypeOf(saved));
}

export fn restore_state(state: [*]const u32, len: u32) i32 {
    if (len != 8 or state[0] != 1) return 1; // another version's state: start afresh
    count = state[1];
    return 0;
}
