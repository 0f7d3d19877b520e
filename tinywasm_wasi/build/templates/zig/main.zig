//! __NAME__: a tinywasm module in Zig. Every message on topic "__NAME__" goes back to the
//! browsers watching that topic, numbered. Edit and save: `tinywasm dev` rebuilds it and
//! swaps it in; the count survives the swap. The SDK (`tinywasm`) declares the imports.
const std = @import("std");
const tw = @import("tinywasm");

comptime {
    tw.exportAllocator(); // malloc and free, for the host
}

const topic = "__NAME__";
var count: u32 = 0;
var line: [256]u8 = undefined;

export fn init() void {
    tw.subscribe(topic);
    tw.log("__NAME__ started");
}

export fn on_message(payload: [*]const u8, len: u32) void {
    count += 1;
    const text = std.fmt.bufPrint(&line, "#{d}: {s}", .{ count, payload[0..@min(len, 200)] }) catch return;
    tw.wsBroadcast(topic, text);
}

// The count, handed to the next version on a hot swap (version tag 1).
export fn save_state() u64 {
    return tw.state.save(1, std.mem.asBytes(&count));
}

export fn restore_state(ptr: [*]const u8, len: u32) i32 {
    const saved = tw.state.open(ptr, len) orelse return tw.state.rejected;
    if (saved.version != 1 or saved.data.len != 4) return tw.state.rejected; // start afresh
    count = std.mem.readInt(u32, saved.data[0..4], .little);
    return tw.state.taken;
}
