/* echo_http: the full HTTP mode. Answers every request with 200 and a JSON description of it:
 *
 *     {"method":"POST","path":"/m/echo_http/x","route":"echo_http","query":"a=1",
 *      "headers":{"x-tag":"tag",...},"body_size":5,"body":"hello"}
 *
 * plus the header `x-echo: echo_http`. The body is echoed up to 4 KiB, byte by byte
 * (bytes above 0x7F as \u00XX). Middlewares in front of it show up in "headers" (x-tag,
 * x-auth). See docs/http.md. */
#define JSON_MAX (48 * 1024)
#define TW_HTTP_RESPONSE_MAX (JSON_MAX + 256) /* the answer holds the JSON and a little more */

#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

#define BODY_ECHO_MAX 4096

static char json[JSON_MAX];
static tw_http_request request;
static int json_len;
static int json_over; /* the description did not fit in `json` */

static void put(const char *s, int n) {
    if (n > (int)sizeof json - json_len) {
        n = (int)sizeof json - json_len;
        json_over = 1;
    }
    memcpy(json + json_len, s, (size_t)n);
    json_len += n;
}

static void put_str(const char *s) { put(s, (int)strlen(s)); }

/* A JSON string; control characters and bytes above 0x7F as \u00XX. */
static void put_json(const char *s, int n) {
    static const char hex[] = "0123456789abcdef";
    int i;
    put("\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(esc, 2);
        } else if (c < 0x20 || c > 0x7E) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(esc, 6);
        } else {
            put((const char *)&c, 1);
        }
    }
    put("\"", 1);
}

static void put_field(const char *name, tw_str value) {
    put_str(",\"");
    put_str(name);
    put_str("\":");
    put_json(value.p, value.len);
}

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    char number[16];
    int i, n;
    if (!tw_http_parse(req, len, &request))
        return tw_http_respond(400, TW_NO_HEADERS, "echo_http: unreadable request\n");
    json_len = json_over = 0;
    put_str("{\"method\":");
    put_json(request.method.p, request.method.len);
    put_field("path", request.path);
    put_field("route", request.route);
    put_field("query", request.query);
    put_str(",\"headers\":{");
    for (i = 0; i < request.header_count; i++) {
        if (i) put_str(",");
        put_json(request.headers[i].name.p, request.headers[i].name.len);
        put_str(":");
        put_json(request.headers[i].value.p, request.headers[i].value.len);
    }
    put_str("},\"body_size\":");
    n = request.body_len;
    i = (int)sizeof number;
    do number[--i] = (char)('0' + n % 10); while ((n /= 10) > 0);
    put(number + i, (int)sizeof number - i);
    put_str(",\"body\":");
    put_json((const char *)request.body,
             request.body_len < BODY_ECHO_MAX ? request.body_len : BODY_ECHO_MAX);
    put_str("}\n");
    if (json_over)
        return tw_http_respond(431, TW_NO_HEADERS,
                               "echo_http: the request headers are too large to describe\n");
    return tw_http_respond_bytes(
        200, TW_HEADERS({"content-type", "application/json"}, {"x-echo", "echo_http"}), json,
        (size_t)json_len);
}
