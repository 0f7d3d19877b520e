/* http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
 * of the request, and any other method with 405. */
#include <string.h>

#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

static tw_http_request request;
static char json[2048];
static size_t used;

static void put(const char *s, size_t n) {
    if (used + n < sizeof json) memcpy(json + used, s, n), used += n;
    else used = sizeof json; /* over: the check below answers 500 */
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void put_string(const char *s, int n) {
    char esc[8];
    put("\"", 1);
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(esc, 2);
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = "0123456789abcdef"[c >> 4], esc[5] = "0123456789abcdef"[c & 15];
            put(esc, 6);
        } else put((const char *)&c, 1);
    }
    put("\"", 1);
}

static void put_key(const char *key) {
    put(used > 1 ? "," : "", used > 1);
    put_string(key, (int)strlen(key));
    put(":", 1);
}

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    char number[20];
    const tw_str *agent;
    if (!tw_http_parse(req, len, &request))
        return tw_http_respond(400, TW_NO_HEADERS, "unreadable request\n");
    if (!tc_eq(request.method.p, (size_t)request.method.len, "GET") &&
        !tc_eq(request.method.p, (size_t)request.method.len, "POST"))
        return tw_http_respond(405, TW_HEADERS({"allow", "GET, POST"}), "method not allowed\n");
    agent = tw_http_header(&request, "x-agent");
    used = 0;
    put("{", 1);
    put_key("lang"), put_string("c", 1);
    put_key("method"), put_string(request.method.p, request.method.len);
    put_key("path"), put_string(request.path.p, request.path.len);
    put_key("query"), put_string(request.query.p, request.query.len);
    put_key("body_bytes"), put(number, (size_t)tw_u64_text((uint64_t)request.body_len, number));
    put_key("agent"), agent ? put_string(agent->p, agent->len) : put_string("", 0);
    put("}", 1);
    if (used >= sizeof json) return tw_http_respond(500, TW_NO_HEADERS, "answer too long\n");
    return tw_http_respond_bytes(200, TW_HEADERS({"content-type", "application/json"}), json,
                                 used);
}
