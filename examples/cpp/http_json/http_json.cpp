// http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
// of the request, and any other method with 405.
#include <cstring>

#include "tinywasm.hpp"

namespace tw = tinywasm;

TW_EXPORT_ALLOCATOR();

// The answer, built in a fixed buffer (no std::string: a module needs no libc++).
static char json[2048];
static size_t used;

static void put(std::string_view s) {
    if (used + s.size() <= sizeof json) std::memcpy(json + used, s.data(), s.size());
    used += s.size();
}

static void put_string(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    put("\"");
    for (char c : s) {
        unsigned char u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') put({"\\", 1}), put({&c, 1});
        else if (u < 0x20) put("\\u00"), put({&hex[u >> 4], 1}), put({&hex[u & 15], 1});
        else put({&c, 1});
    }
    put("\"");
}

TW_EXPORT(handle_http) uint64_t handle_http(const void *p, int n) {
    tw::http::request request(p, n);
    if (!request.ok) return tw::http::respond(400, {}, "unreadable request\n");
    if (request.method() != "GET" && request.method() != "POST")
        return tw::http::respond(405, {{"allow", "GET, POST"}}, "method not allowed\n");
    char number[20];
    used = 0;
    put("{\"lang\":\"cpp\",\"method\":");
    put_string(request.method());
    put(",\"path\":");
    put_string(request.path());
    put(",\"query\":");
    put_string(request.query());
    put(",\"body_bytes\":");
    put({number, size_t(tw_u64_text(request.body().size(), number))});
    put(",\"agent\":");
    put_string(request.header("x-agent"));
    put("}");
    if (used > sizeof json) return tw::http::respond(500, {}, "answer too long\n");
    return tw::http::respond_bytes(200, {{"content-type", "application/json"}}, {json, used});
}
