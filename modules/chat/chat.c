/* chat: rebroadcasts every message on bus topic `chat` to WebSocket clients on `chat`.
 * Browsers send frames on /ws?topic=chat; the server publishes them on the bus topic
 * `chat`; this module sends each one back, unchanged, to every browser on `chat`. */
#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init(void) { tw_subscribe_str("chat"); }

TW_EXPORT(on_message) void on_message(const char *payload, int len) {
    ws_broadcast("chat", 4, payload, len);
}
