//! http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
//! of the request, and any other method with 405.
const std = @import("std");
const tw = @import("tinywasm");

comptime {
    tw.exportAllocator();
}

var request: tw.http.Request = .{};
var json: [2048]u8 = undefined;

export fn handle_http(ptr: [*]const u8, len: u32) u64 {
    if (!tw.http.parse(ptr, len, &request)) return tw.http.respondText(400, &.{}, "unreadable request\n");
    const method = request.method;
    if (!std.mem.eql(u8, method, "GET") and !std.mem.eql(u8, method, "POST")) {
        return tw.http.respondText(405, &.{.{ .name = "allow", .value = "GET, POST" }}, "method not allowed\n");
    }
    var number: [20]u8 = undefined;
    var w = tw.Buffer.init(&json);
    w.put("{\"lang\":\"zig\",\"method\":");
    w.jsonString(method);
    w.put(",\"path\":");
    w.jsonString(request.path);
    w.put(",\"query\":");
    w.jsonString(request.query);
    w.put(",\"body_bytes\":");
    w.put(tw.decimal(&number, request.body.len));
    w.put(",\"agent\":");
    w.jsonString(request.header("x-agent") orelse "");
    w.put("}");
    if (w.over) return tw.http.respondText(500, &.{}, "answer too long\n");
    return tw.http.respondBytes(200, &.{.{ .name = "content-type", .value = "application/json" }}, w.slice());
}
