// counter: counts the messages on counter.inc, publishes each new count on counter.value,
// answers GET /m/counter (compat mode) with the count, and hands the count to its next
// version across a hot swap (state version 1: the count as 8 bytes little-endian).
package main

import (
	"encoding/binary"
	"strconv"

	"tinywasm/tinywasm"
)

const stateVersion = 1

var count uint64

func init() {
	tinywasm.OnInit(func() {
		tinywasm.Subscribe("counter.inc")
		tinywasm.Log("go counter ready")
	})
	tinywasm.OnMessage(func([]byte) {
		count++
		tinywasm.Publish("counter.value", strconv.AppendUint(nil, count, 10))
	})
	tinywasm.Handle(func(method, path string) (string, bool) {
		return strconv.FormatUint(count, 10), true
	})
	tinywasm.OnSaveState(func() (uint32, []byte) {
		return stateVersion, binary.LittleEndian.AppendUint64(nil, count)
	})
	tinywasm.OnRestoreState(func(version uint32, tagged bool, data []byte) bool {
		if !tagged || version != stateVersion || len(data) != 8 {
			return false // another layout: the host logs it, we start from 0
		}
		count = binary.LittleEndian.Uint64(data)
		return true
	})
}

func main() {}
