// tinywasm.hpp - the guest interface for C++ modules (guest interface version 2): the C
// header's functions with std::string_view, the HTTP helpers with initializer lists, and
// state handoff. Everything in tinywasm.h and tinywasm_http.h stays available.
//
//     #include "tinywasm.hpp"
//     TW_EXPORT_ALLOCATOR();
//     TW_EXPORT(init) void init() { tinywasm::subscribe("ping"); }
//     TW_EXPORT(on_message) void on_message(const char *p, int n) {
//         tinywasm::publish("pong", tinywasm::view(p, n));
//     }
//
// Build: python -m ziglang c++ --target=wasm32-wasi -mexec-model=reactor -fno-exceptions ...
// (tinywasm build does this for language = "cpp").
#ifndef TINYWASM_HPP
#define TINYWASM_HPP

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "tinywasm.h"
#include "tinywasm_http.h"

namespace tinywasm {

using bytes = std::string_view;

// The data the host placed at `p` for this call (valid only during it).
inline std::string_view view(const void *p, int n) {
    return {static_cast<const char *>(p), static_cast<size_t>(n)};
}

inline void publish(std::string_view topic, std::string_view payload) {
    ::publish(topic.data(), int(topic.size()), payload.data(), int(payload.size()));
}
inline void subscribe(std::string_view pattern) { ::subscribe(pattern.data(), int(pattern.size()), 0); }
inline void unsubscribe(std::string_view pattern) { ::unsubscribe(pattern.data(), int(pattern.size())); }
inline void ws_broadcast(std::string_view topic, std::string_view payload) {
    ::ws_broadcast(topic.data(), int(topic.size()), payload.data(), int(payload.size()));
}
inline void log(std::string_view line) { tw_log(line.data(), int(line.size())); }

// Version 2: who published the message being delivered ("user:alice", "conn:c7",
// "module:chat"), or an empty view outside a delivery and for the server's own messages.
// Valid until the next call; a sender over 256 bytes is cut (tw_message_sender has it all).
inline std::string_view message_sender() {
    static char buf[256];
    int n = tw_message_sender(buf, int(sizeof buf));
    if (n < 0) return {};
    return {buf, size_t(n) < sizeof buf ? size_t(n) : sizeof buf};
}

inline uint64_t pack(const void *p, size_t n) { return tw_pack(p, n); }

namespace state {
// save_state's result: `data` tagged `version` (the SDK state envelope).
inline uint64_t save(uint32_t version, std::string_view data) {
    return tw_state_save(version, data.data(), data.size());
}
// The tag of restore_state's bytes (-1: too short for one) and the data after it.
struct saved {
    int64_t version;
    std::string_view data;
};
inline saved open(const void *p, int n) {
    int64_t version = tw_state_version(p, n);
    if (version < 0) return {-1, view(p, n)};
    return {version, view(static_cast<const char *>(p) + TW_STATE_HEADER, n - TW_STATE_HEADER)};
}
}  // namespace state

namespace http {
using header = tw_http_pair;  // {"name", "value"}, NUL-terminated

// A full-mode request; its views point into the host's block (valid during the call).
struct request {
    tw_http_request raw;
    bool ok;

    request(const void *p, int n) { ok = tw_http_parse(p, n, &raw) != 0; }
    std::string_view method() const { return {raw.method.p, size_t(raw.method.len)}; }
    std::string_view path() const { return {raw.path.p, size_t(raw.path.len)}; }
    std::string_view route() const { return {raw.route.p, size_t(raw.route.len)}; }
    std::string_view query() const { return {raw.query.p, size_t(raw.query.len)}; }
    std::string_view body() const {
        return {reinterpret_cast<const char *>(raw.body), size_t(raw.body_len)};
    }
    // A header's value (name in lower case), or an empty view.
    std::string_view header(const char *lower_name) const {
        const tw_str *v = tw_http_header(&raw, lower_name);
        return v ? std::string_view{v->p, size_t(v->len)} : std::string_view{};
    }
};

inline tw_http_headers headers(std::initializer_list<header> list) {
    return {list.begin(), list.size()};
}

// Answer with a text body (NUL-terminated) or a byte body.
inline uint64_t respond(int status, std::initializer_list<header> h, const char *text) {
    return tw_http_respond(status, headers(h), text);
}
inline uint64_t respond_bytes(int status, std::initializer_list<header> h, std::string_view b) {
    return tw_http_respond_bytes(status, headers(h), b.data(), b.size());
}
// From a middleware: pass the request on with these headers set.
inline uint64_t next(std::initializer_list<header> h) { return tw_http_next(headers(h)); }
}  // namespace http

}  // namespace tinywasm

#endif  // TINYWASM_HPP
