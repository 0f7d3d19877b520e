//go:build wasip1

// Package tinywasm writes tinywasm-wasi modules in Go (guest interface version 2,
// docs/abi.md). Build with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared.
//
// Register handlers from main's init() (Go's, which runs before the host's "init" export)
// or from OnInit; the package exports the functions the host calls:
//
//	func init() {
//		tinywasm.OnInit(func() { tinywasm.Subscribe("ping") })
//		tinywasm.OnTopicMessage(func(topic string, payload []byte) {
//			tinywasm.Publish("pong", payload)
//		})
//	}
//
//	func main() {}
//
// Blocks the package hands the host (malloc's, answers, saved state) are pinned: Go's
// garbage collector would otherwise reuse a block that only the host still points to.
package tinywasm

import "unsafe"

// ABIVersion is the guest interface version this package follows.
const ABIVersion = 2

//go:wasmimport env publish
func hostPublish(topicPtr, topicLen, payloadPtr, payloadLen uint32)

//go:wasmimport env subscribe
func hostSubscribe(topicPtr, topicLen, handlerIdx uint32)

//go:wasmimport env unsubscribe
func hostUnsubscribe(topicPtr, topicLen uint32)

//go:wasmimport env ws_broadcast
func hostWsBroadcast(topicPtr, topicLen, payloadPtr, payloadLen uint32)

//go:wasmimport env log
func hostLog(msgPtr, msgLen uint32)

//go:wasmimport env message_sender
func hostMessageSender(bufPtr, bufLen uint32) int32

func strPtr(s string) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))) }

func bytesPtr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0])))
}

// Publish sends payload on the concrete bus topic (no wildcards).
func Publish(topic string, payload []byte) {
	hostPublish(strPtr(topic), uint32(len(topic)), bytesPtr(payload), uint32(len(payload)))
}

// Subscribe subscribes to a topic pattern (`*` one token, `>` the rest).
func Subscribe(pattern string) { hostSubscribe(strPtr(pattern), uint32(len(pattern)), 0) }

// Unsubscribe removes the subscription to exactly this pattern.
func Unsubscribe(pattern string) { hostUnsubscribe(strPtr(pattern), uint32(len(pattern))) }

// Broadcast sends payload as one binary frame to every WebSocket client on topic.
func Broadcast(topic string, payload []byte) {
	hostWsBroadcast(strPtr(topic), uint32(len(topic)), bytesPtr(payload), uint32(len(payload)))
}

// Log writes one line to the server log, tagged with the module name.
func Log(line string) { hostLog(strPtr(line), uint32(len(line))) }

// MessageSender says who published the message being delivered ("user:<sub>",
// "conn:c<N>", "module:<name>"); ok is false outside a delivery and for the server's own
// messages. Guest interface version 2: the host sets it, a publisher cannot forge it.
func MessageSender() (sender string, ok bool) {
	buf := make([]byte, 256)
	n := hostMessageSender(bytesPtr(buf), uint32(len(buf)))
	if n < 0 {
		return "", false
	}
	if int(n) > len(buf) {
		buf = make([]byte, n)
		n = hostMessageSender(bytesPtr(buf), uint32(len(buf)))
		if n < 0 || int(n) > len(buf) {
			return "", false
		}
	}
	return string(buf[:n]), true
}

// Pack returns a block as one i64 result: pointer high, length low.
func Pack(b []byte) uint64 { return uint64(bytesPtr(b))<<32 | uint64(uint32(len(b))) }

// view is the host's data at ptr for the current call (not copied; valid during it).
func view(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

// -- the allocator: blocks the host holds are kept reachable until it frees them ----------

var pinned = map[uint32][]byte{}

//go:wasmexport malloc
func malloc(size uint32) uint32 {
	if size == 0 {
		size = 1
	}
	block := make([]byte, size)
	ptr := bytesPtr(block)
	pinned[ptr] = block
	return ptr
}

//go:wasmexport free
func free(ptr uint32) { delete(pinned, ptr) }

// keep holds one answer block per kind until the next answer of that kind replaces it.
var keep = map[string][]byte{}

func hold(kind string, b []byte) []byte {
	keep[kind] = b
	return b
}

// -- handlers -----------------------------------------------------------------------------

var (
	onInit         func()
	onTopicMessage func(topic string, payload []byte)
	onDrain        func() int32
)

// OnInit registers what the host's init() call runs: subscribe and publish here.
func OnInit(f func()) { onInit = f }

// OnTopicMessage registers the message handler (topic and payload; the payload is valid
// only during the call: copy what you keep).
func OnTopicMessage(f func(topic string, payload []byte)) { onTopicMessage = f }

// OnMessage registers a message handler without the topic (the reference's handler).
func OnMessage(f func(payload []byte)) {
	onTopicMessage = func(_ string, payload []byte) { f(payload) }
}

// OnDrain registers drain(): milliseconds to wait before asking again, 0 when idle.
func OnDrain(f func() int32) { onDrain = f }

//go:wasmexport init
func hostInit() {
	if onInit != nil {
		onInit()
	}
}

//go:wasmexport on_topic_message
func hostOnTopicMessage(topicPtr, topicLen, payloadPtr, payloadLen uint32) {
	if onTopicMessage != nil {
		onTopicMessage(string(view(topicPtr, topicLen)), view(payloadPtr, payloadLen))
	}
}

//go:wasmexport drain
func hostDrain() int32 {
	if onDrain == nil {
		return 0
	}
	return onDrain()
}
