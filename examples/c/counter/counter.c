/* counter: counts the messages on counter.inc, publishes each new count on counter.value,
 * answers GET /m/counter (compat mode) with the count, and hands the count to its next
 * version across a hot swap (state version 1: the count as 8 bytes little-endian). */
#include <string.h>

#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

#define STATE_VERSION 1

static uint64_t count;
static char text[24];

TW_EXPORT(init) void init(void) {
    tw_subscribe_str("counter.inc");
    tw_log_str("c counter ready");
}

TW_EXPORT(on_message) void on_message(const char *payload, int len) {
    (void)payload, (void)len;
    count++;
    publish("counter.value", 13, text, tw_u64_text(count, text));
}

TW_EXPORT(handle) const char *handle(const char *req, int len) {
    (void)req, (void)len;
    text[tw_u64_text(count, text)] = 0;
    return text;
}

TW_EXPORT(save_state) uint64_t save_state(void) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(count >> (8 * i));
    return tw_state_save(STATE_VERSION, le, sizeof le);
}

TW_EXPORT(restore_state) int restore_state(const void *ptr, int len) {
    const void *data;
    size_t n;
    if (!tw_state_open(ptr, len, STATE_VERSION, &data, &n) || n != 8)
        return TW_STATE_REJECTED; /* another layout: the host logs it, we start from 0 */
    count = 0;
    for (int i = 0; i < 8; i++) count |= (uint64_t)((const unsigned char *)data)[i] << (8 * i);
    return TW_STATE_TAKEN;
}
