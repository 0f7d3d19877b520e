/*
 * tw_cbor.h - a minimal CBOR (RFC 8949) reader and writer for guest modules, header-only.
 * (Names start with tc_.) HTTP modules rarely need it directly: tinywasm_http.h reads the
 * request and writes the answer with it.
 *
 * It covers what the HTTP full mode (docs/http.md) uses: definite-length maps and arrays,
 * text and byte strings, unsigned and negative integers, true/false.
 *
 * Writer: fill a caller-owned buffer; on overflow `w.overflow` is set and writing stops.
 * tc_map() and tc_array() take the number of pairs or items that follow: the caller counts
 * them (tinywasm_http.h's tw_http_respond() and tw_http_next() count for you).
 *
 *     unsigned char buf[256];
 *     tc_writer w;
 *     tc_writer_init(&w, buf, sizeof buf);
 *     tc_map(&w, 1);
 *     tc_text_str(&w, "status");
 *     tc_uint(&w, 200);
 *
 * Reader: every tc_read_* returns 1 on success, and 0 when the next item has another type or
 * there is none (nothing is consumed; step over an unwanted item with tc_skip()) or when
 * the data is malformed (then `r.error` is set and every later call fails too). Strings are
 * returned as pointers into the input: nothing is copied or allocated, and text is not
 * checked to be UTF-8.
 *
 * Definite lengths only. An indefinite-length item (additional information 31, including
 * the "break" byte 0xFF) or a reserved one (28-30) is malformed for this reader: reading or
 * skipping it fails and sets `r.error`. The host's requests never contain one. tc_skip()
 * steps over every other item: tags with their content, floats and simple values.
 *
 *     tc_reader r;
 *     tc_reader_init(&r, data, len);
 *     size_t n;
 *     if (!tc_read_map(&r, &n)) ...
 */
#ifndef TW_CBOR_H
#define TW_CBOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    TC_UINT = 0,
    TC_NEGINT = 1,
    TC_BYTES = 2,
    TC_TEXT = 3,
    TC_ARRAY = 4,
    TC_MAP = 5,
    TC_TAG = 6,
    TC_SIMPLE = 7,
};

#define TC_MAX_DEPTH 16

/* The writer's two workers stay out of line: inlined at every item they triple the code. */
#if defined(__GNUC__) || defined(__clang__)
#define TC_NOINLINE_ __attribute__((noinline))
#else
#define TC_NOINLINE_
#endif

/* -- writer ----------------------------------------------------------------------------- */

typedef struct {
    unsigned char *buf;
    size_t cap;
    size_t len;
    int overflow;
} tc_writer;

static inline void tc_writer_init(tc_writer *w, void *buf, size_t cap) {
    w->buf = (unsigned char *)buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = 0;
}

static inline TC_NOINLINE_ void tc_put_(tc_writer *w, const void *data, size_t n) {
    if (n == 0) return; /* data may be NULL then */
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
}

static inline TC_NOINLINE_ void tc_head_(tc_writer *w, int major, uint64_t v) {
    unsigned char b[9];
    size_t n, i;
    if (v < 24) {
        b[0] = (unsigned char)(major << 5 | (int)v);
        n = 1;
    } else {
        int ai = v <= 0xFF ? 24 : v <= 0xFFFF ? 25 : v <= 0xFFFFFFFFu ? 26 : 27;
        size_t size = (size_t)1 << (ai - 24);
        b[0] = (unsigned char)(major << 5 | ai);
        for (i = 0; i < size; i++) b[1 + i] = (unsigned char)(v >> (8 * (size - 1 - i)));
        n = 1 + size;
    }
    tc_put_(w, b, n);
}

static inline void tc_map(tc_writer *w, size_t pairs) { tc_head_(w, TC_MAP, pairs); }
static inline void tc_array(tc_writer *w, size_t items) { tc_head_(w, TC_ARRAY, items); }
static inline void tc_uint(tc_writer *w, uint64_t v) { tc_head_(w, TC_UINT, v); }

static inline void tc_int(tc_writer *w, int64_t v) {
    if (v >= 0) tc_head_(w, TC_UINT, (uint64_t)v);
    else tc_head_(w, TC_NEGINT, (uint64_t)(-1 - v));
}

static inline void tc_bool(tc_writer *w, int v) {
    unsigned char b = v ? 0xF5 : 0xF4;
    tc_put_(w, &b, 1);
}

static inline void tc_text(tc_writer *w, const char *s, size_t n) {
    tc_head_(w, TC_TEXT, n);
    tc_put_(w, s, n);
}

static inline void tc_text_str(tc_writer *w, const char *s) { tc_text(w, s, strlen(s)); }

static inline void tc_bytes(tc_writer *w, const void *p, size_t n) {
    tc_head_(w, TC_BYTES, n);
    tc_put_(w, p, n);
}

/* -- reader ----------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    int error;
} tc_reader;

static inline void tc_reader_init(tc_reader *r, const void *data, size_t len) {
    r->p = (const unsigned char *)data;
    r->end = r->p + len;
    r->error = 0;
}

static inline int tc_fail_(tc_reader *r) {
    r->error = 1;
    return 0;
}

/* Major type of the next item, or -1 at the end or after an error. */
static inline int tc_peek(const tc_reader *r) {
    return (r->error || r->p >= r->end) ? -1 : *r->p >> 5;
}

/* Read an item head: its major type and argument. Indefinite (31) and reserved (28-30)
 * additional information are malformed here. */
static inline int tc_head_read_(tc_reader *r, int *major, uint64_t *v) {
    int ai, i, size;
    if (r->error || r->p >= r->end) return tc_fail_(r);
    *major = *r->p >> 5;
    ai = *r->p & 31;
    r->p++;
    if (ai < 24) {
        *v = (uint64_t)ai;
        return 1;
    }
    if (ai > 27) return tc_fail_(r);
    size = 1 << (ai - 24);
    if (r->end - r->p < size) return tc_fail_(r);
    *v = 0;
    for (i = 0; i < size; i++) *v = *v << 8 | r->p[i];
    r->p += size;
    return 1;
}

static inline int tc_expect_(tc_reader *r, int want, uint64_t *v) {
    int major;
    if (tc_peek(r) != want) return 0; /* another type: not an error, the caller may skip it */
    return tc_head_read_(r, &major, v);
}

static inline int tc_read_map(tc_reader *r, size_t *pairs) {
    uint64_t v;
    if (!tc_expect_(r, TC_MAP, &v)) return 0;
    if ((uint64_t)(size_t)v != v) return tc_fail_(r); /* more than a size_t holds */
    *pairs = (size_t)v;
    return 1;
}

static inline int tc_read_array(tc_reader *r, size_t *items) {
    uint64_t v;
    if (!tc_expect_(r, TC_ARRAY, &v)) return 0;
    if ((uint64_t)(size_t)v != v) return tc_fail_(r);
    *items = (size_t)v;
    return 1;
}

static inline int tc_read_uint(tc_reader *r, uint64_t *v) { return tc_expect_(r, TC_UINT, v); }

static inline int tc_read_string_(tc_reader *r, int major, const void **p, size_t *n) {
    uint64_t v;
    if (!tc_expect_(r, major, &v)) return 0;
    if ((uint64_t)(r->end - r->p) < v) return tc_fail_(r);
    *p = r->p;
    *n = (size_t)v;
    r->p += v;
    return 1;
}

static inline int tc_read_text(tc_reader *r, const char **s, size_t *n) {
    return tc_read_string_(r, TC_TEXT, (const void **)s, n);
}

static inline int tc_read_bytes(tc_reader *r, const void **p, size_t *n) {
    return tc_read_string_(r, TC_BYTES, p, n);
}

static inline int tc_skip_depth_(tc_reader *r, int depth) {
    int major;
    uint64_t v, i;
    if (depth > TC_MAX_DEPTH || !tc_head_read_(r, &major, &v)) return tc_fail_(r);
    switch (major) {
    case TC_BYTES:
    case TC_TEXT:
        if ((uint64_t)(r->end - r->p) < v) return tc_fail_(r);
        r->p += v;
        return 1;
    case TC_ARRAY:
    case TC_MAP:
        if (major == TC_MAP) v *= 2;
        for (i = 0; i < v; i++)
            if (!tc_skip_depth_(r, depth + 1)) return 0;
        return 1;
    case TC_TAG:
        return tc_skip_depth_(r, depth + 1);
    default: /* integers, simple values and floats: the head was the whole item */
        return 1;
    }
}

/* Skip the next item with its content (nested up to TC_MAX_DEPTH levels). Fails, setting
 * r.error, on malformed data and on indefinite lengths. */
static inline int tc_skip(tc_reader *r) { return tc_skip_depth_(r, 0); }

/* 1 if the n bytes at s equal the NUL-terminated literal. */
static inline int tc_eq(const char *s, size_t n, const char *literal) {
    return strlen(literal) == n && memcmp(s, literal, n) == 0;
}

#endif /* TW_CBOR_H */
