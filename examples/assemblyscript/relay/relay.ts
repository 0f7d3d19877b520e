// relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
// On relay.ctl, "stop" unsubscribes from relay.in, "who" answers "from <sender>" (who
// published the "who": guest interface version 2) and anything else answers "pong".
import {
  bytes,
  log,
  messageSender,
  publish,
  publishText,
  subscribe,
  text,
  unsubscribe,
  wsBroadcast,
} from "tinywasm";
export { malloc, free } from "tinywasm";

export function init(): void {
  subscribe("relay.in");
  subscribe("relay.ctl");
  log("assemblyscript relay ready");
}

export function on_topic_message(topicPtr: usize, topicLen: i32, ptr: usize, len: i32): void {
  if (text(topicPtr, topicLen) == "relay.ctl") {
    const command = text(ptr, len);
    if (command == "stop") {
      unsubscribe("relay.in");
      publishText("relay.out", "stopped");
    } else if (command == "who") {
      const who = messageSender();
      publishText("relay.out", "from " + (who != null ? who! : "nobody"));
    } else {
      publishText("relay.out", "pong");
    }
    return;
  }
  const payload = bytes(ptr, len);
  publish("relay.out", payload);
  wsBroadcast("relay.out", payload);
}
