// relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
// On relay.ctl, "stop" unsubscribes from relay.in and anything else answers "pong".
#include "tinywasm.hpp"

namespace tw = tinywasm;

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init() {
    tw::subscribe("relay.in");
    tw::subscribe("relay.ctl");
    tw::log("cpp relay ready");
}

TW_EXPORT(on_topic_message)
void on_topic_message(const char *tp, int tl, const char *pp, int pl) {
    auto topic = tw::view(tp, tl), payload = tw::view(pp, pl);
    if (topic == "relay.ctl") {
        if (payload == "stop") {
            tw::unsubscribe("relay.in");
            tw::publish("relay.out", "stopped");
        } else {
            tw::publish("relay.out", "pong");
        }
        return;
    }
    tw::publish("relay.out", payload);
    tw::ws_broadcast("relay.out", payload);
}
