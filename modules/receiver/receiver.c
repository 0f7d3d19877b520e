/* receiver: forwards every message on topic `events` to WebSocket clients on `events`. */
#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init(void) { tw_subscribe_str("events"); }

TW_EXPORT(on_message) void on_message(const char *payload, int len) {
    ws_broadcast("events", 6, payload, len);
}
