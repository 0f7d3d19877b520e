/* relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
 * On relay.ctl, "stop" unsubscribes from relay.in, "who" answers "from <sender>" (who
 * published the "who": guest interface version 2) and anything else answers "pong". */
#include <string.h>

#include "tinywasm.h"

TW_EXPORT_ALLOCATOR();

TW_EXPORT(init) void init(void) {
    tw_subscribe_str("relay.in");
    tw_subscribe_str("relay.ctl");
    tw_log_str("c relay ready");
}

TW_EXPORT(on_topic_message)
void on_topic_message(const char *topic, int topic_len, const char *payload, int len) {
    if (topic_len == 9 && memcmp(topic, "relay.ctl", 9) == 0) {
        if (len == 4 && memcmp(payload, "stop", 4) == 0) {
            tw_unsubscribe_str("relay.in");
            tw_publish_str("relay.out", "stopped");
        } else if (len == 3 && memcmp(payload, "who", 3) == 0) {
            static char line[5 + 256];
            int n = tw_message_sender(line + 5, 256);
            memcpy(line, "from ", 5);
            if (n < 0 || n > 256) publish("relay.out", 9, "from nobody", 11);
            else publish("relay.out", 9, line, 5 + n);
        } else {
            tw_publish_str("relay.out", "pong");
        }
        return;
    }
    publish("relay.out", 9, payload, len);
    ws_broadcast("relay.out", 9, payload, len);
}
