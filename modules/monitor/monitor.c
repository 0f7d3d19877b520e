/* monitor: subscribes to every topic (`>`) and broadcasts "<topic>: <payload>" on the
 * WebSocket topic `monitor`, truncated to MONITOR_MAX bytes. */
#include <string.h>

#include "tinywasm.h"

#define MONITOR_MAX 1024

static char line[MONITOR_MAX];

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init(void) { tw_subscribe_str(">"); }

static int append(int at, const char *src, int len) {
    int room = MONITOR_MAX - at;
    if (len > room) len = room;
    if (len > 0) memcpy(line + at, src, (size_t)len);
    return at + (len > 0 ? len : 0);
}

TW_EXPORT(on_topic_message)
void on_topic_message(const char *topic, int topic_len, const char *payload, int len) {
    int n = append(0, topic, topic_len);
    n = append(n, ": ", 2);
    n = append(n, payload, len);
    ws_broadcast("monitor", 7, line, n);
}
