/*
 * tinywasm_http.h - helpers for HTTP modules (docs/http.md), on top of tw_cbor.h.
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
 * `req` is a CBOR map; tw_http_parse() reads it into a tw_http_request. Answer with one of
 *
 *     return tw_http_respond(401, TW_HEADERS({"www-authenticate", "Bearer"}), "no\n");
 *     return tw_http_respond_bytes(200, TW_NO_HEADERS, data, data_len);
 *     return tw_http_next(TW_HEADERS({"x-user", "ann"}, {"x-role", "admin"})); (middleware)
 *     return 0;  (no answer: 204 from a route, "pass on unchanged" from a middleware)
 *
 * They encode the CBOR answer map ({status, headers, body} or {next: true, headers}) and
 * count its pairs themselves, into a static buffer of TW_HTTP_RESPONSE_MAX bytes (#define
 * it before the #include for a larger one). An answer that does not fit becomes a 500
 * saying so, never a cut-off map. The host reads the answer before the next call, and calls
 * into one module never overlap, so one static buffer is safe. The request memory is freed
 * by the host after the call (export malloc and free: TW_EXPORT_ALLOCATOR()).
 *
 * To build an answer by hand instead, write the map with tw_cbor.h into your own buffer and
 * return tw_http_result(&writer); then counting its pairs is up to you.
 */
#ifndef TINYWASM_HTTP_H
#define TINYWASM_HTTP_H

#include <stdint.h>

#include "tw_cbor.h"

#ifndef TW_HTTP_MAX_HEADERS
#define TW_HTTP_MAX_HEADERS 32 /* request headers tw_http_parse() keeps */
#endif

#ifndef TW_HTTP_RESPONSE_MAX
#define TW_HTTP_RESPONSE_MAX 4096 /* bytes for the answer tw_http_respond/next encode */
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

/* -- answers ---------------------------------------------------------------------------- */

/* One header of an answer: NUL-terminated name and value, neither NULL. */
typedef struct {
    const char *name;
    const char *value;
} tw_http_pair;

/* The headers of an answer: `count` pairs at `pairs`. Write them with TW_HEADERS(...), which
 * counts them, as TW_NO_HEADERS, or as (tw_http_headers){array, n} for a list built at run
 * time. A name given twice (any case) is sent once per value: two set-cookie pairs send two
 * Set-Cookie lines. */
typedef struct {
    const tw_http_pair *pairs;
    size_t count;
} tw_http_headers;

/* TW_HEADERS({"content-type", "application/json"}, {"x-echo", "echo_http"}) */
#define TW_HEADERS(...)                                                                    \
    ((tw_http_headers){(const tw_http_pair[]){__VA_ARGS__},                                \
                       sizeof((const tw_http_pair[]){__VA_ARGS__}) / sizeof(tw_http_pair)})

#define TW_NO_HEADERS ((tw_http_headers){0, 0})

static inline int tw_http_same_name_(const char *a, const char *b) {
    for (;; a++, b++) {
        char x = (char)(*a >= 'A' && *a <= 'Z' ? *a + 32 : *a);
        char y = (char)(*b >= 'A' && *b <= 'Z' ? *b + 32 : *b);
        if (x != y) return 0;
        if (!x) return 1;
    }
}

/* How many pairs from i on have pair i's name; 0 if an earlier pair has it. */
static inline size_t tw_http_name_count_(tw_http_headers h, size_t i) {
    size_t j, n = 0;
    for (j = 0; j < h.count; j++)
        if (tw_http_same_name_(h.pairs[j].name, h.pairs[i].name)) {
            if (j < i) return 0;
            n++;
        }
    return n;
}

/* Write `h` as a CBOR headers map: one key per name, its value a text, or an array of texts
 * for a name given more than once (allowed in a response, not in tw_http_next()). */
static inline void tw_http_put_headers(tc_writer *w, tw_http_headers h) {
    size_t i, j, n, names = 0;
    for (i = 0; i < h.count; i++) names += tw_http_name_count_(h, i) > 0;
    tc_map(w, names);
    for (i = 0; i < h.count; i++) {
        n = tw_http_name_count_(h, i);
        if (n == 0) continue;
        tc_text_str(w, h.pairs[i].name);
        if (n > 1) tc_array(w, n);
        for (j = i; j < h.count; j++)
            if (tw_http_same_name_(h.pairs[j].name, h.pairs[i].name))
                tc_text_str(w, h.pairs[j].value);
    }
}

enum { TW_HTTP_NO_BODY_ = -1 };

/* {next: true[, headers]} if `next`, else {status[, headers][, body]} (body_type TC_TEXT,
 * TC_BYTES or TW_HTTP_NO_BODY_). The pair count is worked out from the same conditions that
 * write the pairs. */
static inline void tw_http_put_answer_(tc_writer *w, int next, int status, tw_http_headers h,
                                       int body_type, const void *body, size_t body_len) {
    int has_body = !next && body_type != TW_HTTP_NO_BODY_;
    tc_map(w, 1 + (size_t)(h.count > 0) + (size_t)has_body);
    if (next) {
        tc_text_str(w, "next");
        tc_bool(w, 1);
    } else {
        tc_text_str(w, "status");
        tc_int(w, status); /* the host checks it is 200-599 */
    }
    if (h.count > 0) {
        tc_text_str(w, "headers");
        tw_http_put_headers(w, h);
    }
    if (has_body) {
        tc_text_str(w, "body");
        if (body_type == TC_TEXT) tc_text(w, (const char *)body, body_len);
        else tc_bytes(w, body, body_len);
    }
}

/* The handle_http result for the map in `w`: pointer in the high 32 bits, length low. A
 * writer that overflowed gives a 500 response saying so, never a cut-off map. */
static inline uint64_t tw_http_result(const tc_writer *w) {
    static unsigned char small[64];
    static const char message[] = "response buffer too small";
    tc_writer e;
    if (w->overflow) {
        tc_writer_init(&e, small, sizeof small);
        tw_http_put_answer_(&e, 0, 500, TW_NO_HEADERS, TC_TEXT, message, sizeof message - 1);
        w = &e;
    }
    return (uint64_t)(uintptr_t)w->buf << 32 | (uint64_t)w->len;
}

static inline uint64_t tw_http_answer_(int next, int status, tw_http_headers h,
                                       int body_type, const void *body, size_t body_len) {
    static unsigned char out[TW_HTTP_RESPONSE_MAX];
    tc_writer w;
    tc_writer_init(&w, out, sizeof out);
    tw_http_put_answer_(&w, next, status, h, body_type, body, body_len);
    return tw_http_result(&w);
}

/* Answer with `status`, `headers` and the NUL-terminated text `body` (NULL: no body). */
static inline uint64_t tw_http_respond(int status, tw_http_headers headers, const char *body) {
    if (!body) return tw_http_answer_(0, status, headers, TW_HTTP_NO_BODY_, 0, 0);
    return tw_http_answer_(0, status, headers, TC_TEXT, body, strlen(body));
}

/* Answer with `status`, `headers` and the `len` bytes at `body` (a CBOR byte string: the
 * server adds content-type application/octet-stream unless `headers` has one). */
static inline uint64_t tw_http_respond_bytes(int status, tw_http_headers headers,
                                             const void *body, size_t len) {
    return tw_http_answer_(0, status, headers, TC_BYTES, body, len);
}

/* From a middleware: pass the request on with `headers` set on it (they replace request
 * headers of the same name; each name once). */
static inline uint64_t tw_http_next(tw_http_headers headers) {
    return tw_http_answer_(1, 0, headers, TW_HTTP_NO_BODY_, 0, 0);
}

#endif /* TINYWASM_HTTP_H */
