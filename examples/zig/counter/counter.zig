//! counter: counts the messages on counter.inc, publishes each new count on counter.value,
//! answers GET /m/counter (compat mode) with the count, and hands the count to its next
//! version across a hot swap (state version 1: the count as 8 bytes little-endian).
const std = @import("std");
const tw = @import("tinywasm");

comptime {
    tw.exportAllocator();
}

const state_version = 1;
var count: u64 = 0;
var text: [20]u8 = undefined;

export fn init() void {
    tw.subscribe("counter.inc");
    tw.log("zig counter ready");
}

export fn on_message(ptr: [*]const u8, len: u32) void {
    _ = ptr;
    _ = len;
    count += 1;
    tw.publish("counter.value", tw.decimal(&text, count));
}

export fn handle(ptr: [*]const u8, len: u32) [*]const u8 {
    _ = ptr;
    _ = len;
    return tw.http.compatAnswer(tw.decimal(&text, count));
}

export fn save_state() u64 {
    var le: [8]u8 = undefined;
    std.mem.writeInt(u64, &le, count, .little);
    return tw.state.save(state_version, &le);
}

export fn restore_state(ptr: [*]const u8, len: u32) i32 {
    if (tw.state.open(ptr, len)) |saved| {
        if (saved.version == state_version and saved.data.len == 8) {
            count = std.mem.readInt(u64, saved.data[0..8], .little);
            return tw.state.taken;
        }
    }
    return tw.state.rejected; // another layout: the host logs it, we start from 0
}
