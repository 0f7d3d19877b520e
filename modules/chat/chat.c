/* chat: rebroadcasts every message on bus topic `chat` to WebSocket clients on `chat`,
 * saying who sent it.
 *
 * Browsers send frames on /ws?topic=chat; the server publishes them on the bus topic
 * `chat` with the sender it knows (guest interface version 2, tw_message_sender): the
 * token's user ("user:alice") or, without auth, the connection ("conn:c7"). This module
 * sends each message to every browser on `chat` as
 *
 *     {"from":"user:alice","data":"<the payload, as a JSON string>"}
 *
 * The sender comes from the host, so a browser cannot speak as another. A message
 * without a sender (the server's own) goes out unchanged. Bytes from 0x80 up pass
 * through: a payload that is not UTF-8 makes a line that is not valid JSON either. */
#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

#define MAX_SENDER 256
#define MAX_OUT (64 * 1024)

static char sender[MAX_SENDER];
static char out[MAX_OUT];

/* Append `len` bytes of `s` to out[at..] as the inside of a JSON string; returns the new
 * end, or -1 if it does not fit. Bytes from 0x80 up pass through (UTF-8 stays UTF-8). */
static int json_text(int at, const char *s, int len) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (at + 6 > MAX_OUT) return -1;
        if (c == '"' || c == '\\') {
            out[at++] = '\\';
            out[at++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[at++] = '\\';
            out[at++] = 'u';
            out[at++] = '0';
            out[at++] = '0';
            out[at++] = hex[c >> 4];
            out[at++] = hex[c & 15];
        } else {
            out[at++] = (char)c;
        }
    }
    return at;
}

static int append(int at, const char *s) {
    int n = tw_strlen_(s);
    if (at < 0 || at + n > MAX_OUT) return -1;
    memcpy(out + at, s, (size_t)n);
    return at + n;
}

TW_EXPORT(init) void init(void) { tw_subscribe_str("chat"); }

TW_EXPORT(on_message) void on_message(const char *payload, int len) {
    int n = tw_message_sender(sender, MAX_SENDER);
    if (n < 0) {
        ws_broadcast("chat", 4, payload, len);
        return;
    }
    if (n > MAX_SENDER) { /* never cut: a cut name could be another user's */
        tw_log_str("chat: a message whose sender is over 256 bytes was dropped");
        return;
    }
    int at = append(0, "{\"from\":\"");
    at = at < 0 ? -1 : json_text(at, sender, n);
    at = append(at, "\",\"data\":\"");
    at = at < 0 ? -1 : json_text(at, payload, len);
    at = append(at, "\"}");
    if (at < 0) {
        tw_log_str("chat: a message too long to wrap was dropped");
        return;
    }
    ws_broadcast("chat", 4, out, at);
}
