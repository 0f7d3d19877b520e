/* sender: publishes "hello from sender" on topic `events` once, from init(). */
#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init(void) {
    tw_publish_str("events", "hello from sender");
    tw_log_str("published \"hello from sender\" on events");
}
