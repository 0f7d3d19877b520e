// refstyle: a module written the way the Go reference's (tinywasm/wasi) users write them,
// in its layout (modules/<name>/wasm/main.go), with no SDK: raw //go:wasmimport host
// functions, init, on_message, drain and malloc. It is the reference's receiver example
// made to run under standard Go: //go:wasmexport instead of TinyGo's //export, and malloc
// keeps its blocks reachable (Go's collector would otherwise reuse a block the host still
// writes into). Every message on "events" goes to the browsers on "events".
package main

import "unsafe"

//go:wasmimport env subscribe
func hostSubscribe(topicPtr, topicLen, handlerFnIdx uint32)

//go:wasmimport env ws_broadcast
func hostWsBroadcast(topicPtr, topicLen, payloadPtr, payloadLen uint32)

//go:wasmimport env log
func hostLog(msgPtr, msgLen uint32)

func ptr(s string) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))) }

//go:wasmexport init
func initModule() {
	msg := "refstyle: init called"
	hostLog(ptr(msg), uint32(len(msg)))
	topic := "events"
	hostSubscribe(ptr(topic), uint32(len(topic)), 0)
}

//go:wasmexport on_message
func onMessage(payload, payloadLen uint32) {
	topic := "events"
	hostWsBroadcast(ptr(topic), uint32(len(topic)), payload, payloadLen)
}

//go:wasmexport drain
func drain() uint32 {
	return 0
}

// The host keeps the block it gets and reuses it; it stays referenced here for good.
var blocks [][]byte

//go:wasmexport malloc
func malloc(size uint32) uint32 {
	buf := make([]byte, size+1)
	blocks = append(blocks, buf)
	return uint32(uintptr(unsafe.Pointer(&buf[0])))
}

func main() {}
