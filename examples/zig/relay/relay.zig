//! relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
//! On relay.ctl, "stop" unsubscribes from relay.in, "who" answers "from <sender>" (who
//! published the "who": guest interface version 2) and anything else answers "pong".
const std = @import("std");
const tw = @import("tinywasm");

comptime {
    tw.exportAllocator();
}

export fn init() void {
    tw.subscribe("relay.in");
    tw.subscribe("relay.ctl");
    tw.log("zig relay ready");
}

export fn on_topic_message(topic_ptr: [*]const u8, topic_len: u32, ptr: [*]const u8, len: u32) void {
    const topic = tw.bytes(topic_ptr, topic_len);
    const payload = tw.bytes(ptr, len);
    if (std.mem.eql(u8, topic, "relay.ctl")) {
        if (std.mem.eql(u8, payload, "stop")) {
            tw.unsubscribe("relay.in");
            tw.publish("relay.out", "stopped");
        } else if (std.mem.eql(u8, payload, "who")) {
            var buf: [256]u8 = undefined;
            var line: [261]u8 = undefined;
            const who = (tw.messageSender(&buf) catch null) orelse "nobody";
            @memcpy(line[0..5], "from ");
            @memcpy(line[5 .. 5 + who.len], who);
            tw.publish("relay.out", line[0 .. 5 + who.len]);
        } else {
            tw.publish("relay.out", "pong");
        }
        return;
    }
    tw.publish("relay.out", payload);
    tw.wsBroadcast("relay.out", payload);
}
