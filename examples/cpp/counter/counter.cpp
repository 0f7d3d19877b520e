// counter: counts the messages on counter.inc, publishes each new count on counter.value,
// answers GET /m/counter (compat mode) with the count, and hands the count to its next
// version across a hot swap (state version 1: the count as 8 bytes little-endian).
#include "tinywasm.hpp"

namespace tw = tinywasm;

TW_EXPORT_ALLOCATOR();

constexpr uint32_t state_version = 1;
static uint64_t count;
static char text[21];

TW_EXPORT(init) void init() {
    tw::subscribe("counter.inc");
    tw::log("cpp counter ready");
}

TW_EXPORT(on_message) void on_message(const char *, int) {
    tw::publish("counter.value", {text, size_t(tw_u64_text(++count, text))});
}

TW_EXPORT(handle) const char *handle(const char *, int) {
    text[tw_u64_text(count, text)] = 0;
    return text;
}

uint64_t save_state() {
    char le[8];
    for (int i = 0; i < 8; i++) le[i] = char(count >> (8 * i));
    return tw::state::save(state_version, {le, sizeof le});
}

int restore_state(const void *p, int n) {
    auto saved = tw::state::open(p, n);
    if (saved.version != state_version || saved.data.size() != 8)
        return TW_STATE_REJECTED;  // another layout: the host logs it, we start from 0
    count = 0;
    for (int i = 0; i < 8; i++) count |= uint64_t(uint8_t(saved.data[i])) << (8 * i);
    return TW_STATE_TAKEN;
}
