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

static tw_http_request request;

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    if (!tw_http_parse(req, len, &request))
        return tw_http_respond(400, TW_NO_HEADERS, "auth: unreadable request\n");
    if (tw_http_header(&request, "authorization") == 0)
        return tw_http_respond(401, TW_HEADERS({"www-authenticate", "Bearer"}),
                               "missing Authorization header\n");
    return tw_http_next(TW_HEADERS({"x-auth", "present"}));
}
