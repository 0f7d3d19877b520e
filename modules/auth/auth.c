/* auth: a middleware in the full HTTP mode that turns away requests without credentials.
 * Built as `20-auth@[echo_http].wasm`, it runs in front of /m/echo_http only:
 *
 *   - no Authorization header: it answers 401 itself, which ends the chain;
 *   - otherwise it passes the request on with `x-auth: present` added.
 *
 * A demonstration, not a real check: it looks at the header's presence only. */
#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

static unsigned char out[256];
static tw_http_request request;

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    tc_writer w;
    tc_writer_init(&w, out, sizeof out);
    if (!tw_http_parse(req, len, &request)) {
        tc_map(&w, 2);
        tc_text_str(&w, "status");
        tc_uint(&w, 400);
        tc_text_str(&w, "body");
        tc_text_str(&w, "auth: unreadable request\n");
    } else if (tw_http_header(&request, "authorization") == 0) {
        tc_map(&w, 3);
        tc_text_str(&w, "status");
        tc_uint(&w, 401);
        tc_text_str(&w, "headers");
        tc_map(&w, 1);
        tc_text_str(&w, "www-authenticate");
        tc_text_str(&w, "Bearer");
        tc_text_str(&w, "body");
        tc_text_str(&w, "missing Authorization header\n");
    } else {
        tc_map(&w, 2);
        tc_text_str(&w, "next");
        tc_bool(&w, 1);
        tc_text_str(&w, "headers");
        tc_map(&w, 1);
        tc_text_str(&w, "x-auth");
        tc_text_str(&w, "present");
    }
    return tw_http_result(&w);
}
