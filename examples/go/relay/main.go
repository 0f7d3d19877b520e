// relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
// On relay.ctl, "stop" unsubscribes from relay.in, "who" answers "from <sender>" (who
// published the "who": guest interface version 2) and anything else answers "pong".
package main

import "tinywasm/tinywasm"

func init() {
	tinywasm.OnInit(func() {
		tinywasm.Subscribe("relay.in")
		tinywasm.Subscribe("relay.ctl")
		tinywasm.Log("go relay ready")
	})
	tinywasm.OnTopicMessage(func(topic string, payload []byte) {
		if topic == "relay.ctl" {
			if string(payload) == "stop" {
				tinywasm.Unsubscribe("relay.in")
				tinywasm.Publish("relay.out", []byte("stopped"))
			} else if string(payload) == "who" {
				who, ok := tinywasm.MessageSender()
				if !ok {
					who = "nobody"
				}
				tinywasm.Publish("relay.out", []byte("from "+who))
			} else {
				tinywasm.Publish("relay.out", []byte("pong"))
			}
			return
		}
		tinywasm.Publish("relay.out", payload)
		tinywasm.Broadcast("relay.out", payload)
	})
}

func main() {}
