/*
 * tinywasm_http.h - helpers for HTTP modules (docs/http.md), on top of tinycbor.h.
 *
 * Compat mode (the reference's): export
 *
 *     TW_EXPORT(handle) const char *handle(const char *req, int len);
 *
 * `req` is "METHOD\nPATH\n"; return a NUL-terminated body (at most 64 KiB, served as
 * text/plain), or NULL for "no answer" (204 from a route; "pass on" from a middleware).
 *
 * Full mode: export
 *
 *     TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len);
 *
 * `req` is a CBOR map; tw_http_parse() reads it into a tw_http_request. Build the answer,
 * a CBOR map {status, headers, body} (or {next: true, headers} from a middleware), with
 * tinycbor.h into a static buffer and return tw_http_result(&writer); return 0 for
 * "no answer". The host reads the answer before the next call, and calls into one module
 * never overlap, so a static buffer is safe. The request memory is freed by the host after
 * the call (export malloc and free: TW_EXPORT_ALLOCATOR()).
 */
#ifndef TINYWASM_HTTP_H
#define TINYWASM_HTTP_H

#include <stdint.h>

#include "tinycbor.h"

#ifndef TW_HTTP_MAX_HEADERS
#define TW_HTTP_MAX_HEADERS 32
#endif

typedef struct {
    const char *p;
    int len;
} tw_str;

typedef struct {
    tw_str name; /* lower case */
    tw_str value;
} tw_header;

typedef struct {
    tw_str method;
    tw_str path;  /* whole path as sent, e.g. "/m/echo_http/a%20b" */
    tw_str route; /* the target module, e.g. "echo_http" */
    tw_str query; /* as sent, without "?" */
    const unsigned char *body;
    int body_len;
    int header_count;
    int headers_over; /* headers beyond TW_HTTP_MAX_HEADERS, not kept */
    tw_header headers[TW_HTTP_MAX_HEADERS];
} tw_http_request;

static inline int tw_http_text_(tc_reader *r, tw_str *out) {
    const char *s;
    size_t n;
    if (!tc_read_text(r, &s, &n)) return 0;
    out->p = s;
    out->len = (int)n;
    return 1;
}

/* Read the request map. Returns 1, or 0 if it is not the documented map. */
static inline int tw_http_parse(const void *data, int len, tw_http_request *req) {
    tc_reader r;
    size_t pairs, i, count, j;
    memset(req, 0, sizeof *req);
    tc_reader_init(&r, data, (size_t)len);
    if (!tc_read_map(&r, &pairs)) return 0;
    for (i = 0; i < pairs; i++) {
        const char *key;
        size_t klen;
        int ok = 1;
        if (!tc_read_text(&r, &key, &klen)) return 0;
        if (tc_eq(key, klen, "method")) ok = tw_http_text_(&r, &req->method);
        else if (tc_eq(key, klen, "path")) ok = tw_http_text_(&r, &req->path);
        else if (tc_eq(key, klen, "route")) ok = tw_http_text_(&r, &req->route);
        else if (tc_eq(key, klen, "query")) ok = tw_http_text_(&r, &req->query);
        else if (tc_eq(key, klen, "body")) {
            const void *p;
            size_t n;
            ok = tc_read_bytes(&r, &p, &n);
            req->body = (const unsigned char *)p;
            req->body_len = (int)n;
        } else if (tc_eq(key, klen, "headers")) {
            ok = tc_read_map(&r, &count);
            for (j = 0; ok && j < count; j++) {
                tw_header h;
                ok = tw_http_text_(&r, &h.name) && tw_http_text_(&r, &h.value);
                if (!ok) break;
                if (req->header_count < TW_HTTP_MAX_HEADERS) req->headers[req->header_count++] = h;
                else req->headers_over++;
            }
        } else ok = tc_skip(&r); /* a field added later: ignore it */
        if (!ok) return 0;
    }
    return !r.error;
}

/* The value of header `lower_name` (lower case), or NULL. */
static inline const tw_str *tw_http_header(const tw_http_request *req, const char *lower_name) {
    int i;
    for (i = 0; i < req->header_count; i++)
        if (tc_eq(req->headers[i].name.p, (size_t)req->headers[i].name.len, lower_name))
            return &req->headers[i].value;
    return 0;
}

/* The handle_http result for the map in `w`: pointer in the high 32 bits, length low. A
 * writer that overflowed gives a 500 response saying so, never a cut-off map. */
static inline uint64_t tw_http_result(const tc_writer *w) {
    static const char overflow[] = "\xA2" "\x66" "status" "\x19\x01\xF4" /* status: 500 */
                                   "\x64" "body" "\x78\x19" "response buffer too small";
    if (w->overflow)
        return (uint64_t)(uintptr_t)overflow << 32 | (uint64_t)(sizeof overflow - 1);
    return (uint64_t)(uintptr_t)w->buf << 32 | (uint64_t)w->len;
}

#endif /* TINYWASM_HTTP_H */
