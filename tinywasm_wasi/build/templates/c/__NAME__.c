/* __NAME__: a tinywasm module. Every message on topic "__NAME__" goes back to the
 * browsers watching that topic, numbered. Edit and save: `tinywasm dev` rebuilds it and
 * swaps it in; the count survives the swap. */
#include <string.h>

#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

static unsigned count;

/* "#<n>: " at `out`; returns its length. (printf would make the module ten times larger.) */
static int number_prefix(char *out, unsigned n) {
    char digits[10];
    int len = 0, i = 0;
    do digits[i++] = (char)('0' + n % 10); while ((n /= 10) && i < 10);
    out[len++] = '#';
    while (i) out[len++] = digits[--i];
    out[len++] = ':';
    out[len++] = ' ';
    return len;
}

TW_EXPORT(init) void init(void) {
    tw_subscribe_str("__NAME__");
    tw_log_str("__NAME__ started");
}

TW_EXPORT(on_message) void on_message(const char *payload, int len) {
    char line[256];
    int n = number_prefix(line, ++count);
    if (len > (int)sizeof line - n) len = (int)sizeof line - n;
    memcpy(line + n, payload, (size_t)len);
    ws_broadcast("__NAME__", (int)strlen("__NAME__"), line, n + len);
}

/* The count, handed to the next version on a hot swap (version tag 1). */
TW_EXPORT(save_state) uint64_t save_state(void) { return tw_state_save(1, &count, sizeof count); }

TW_EXPORT(restore_state) int restore_state(const void *state, int len) {
    const void *data;
    size_t n;
    if (!tw_state_open(state, len, 1, &data, &n) || n != sizeof count)
        return TW_STATE_REJECTED; /* another version's layout: the host logs it; start afresh */
    memcpy(&count, data, sizeof count);
    return TW_STATE_TAKEN;
}
