//! relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
//! On relay.ctl, "stop" unsubscribes from relay.in, "who" answers "from <sender>" (who
//! published the "who": guest interface version 2) and anything else answers "pong".

tinywasm::init!(|| {
    tinywasm::subscribe("relay.in");
    tinywasm::subscribe("relay.ctl");
    tinywasm::log("rust relay ready");
});

tinywasm::on_topic_message!(|topic: &str, payload: &[u8]| {
    if topic == "relay.ctl" {
        if payload == b"stop" {
            tinywasm::unsubscribe("relay.in");
            tinywasm::publish("relay.out", b"stopped");
        } else if payload == b"who" {
            let who = tinywasm::message_sender().unwrap_or_else(|| "nobody".into());
            tinywasm::publish("relay.out", format!("from {who}").as_bytes());
        } else {
            tinywasm::publish("relay.out", b"pong");
        }
        return;
    }
    tinywasm::publish("relay.out", payload);
    tinywasm::ws_broadcast("relay.out", payload);
});
