// __NAME__: a tinywasm module in Go. Every message on topic "__NAME__" goes back to the
// browsers watching that topic, numbered. Edit and save: `tinywasm dev` rebuilds it and
// swaps it in; the count survives the swap. The SDK package exports what the host calls.
package main

import (
	"encoding/binary"
	"strconv"

	"tinywasm/tinywasm"
)

var count uint32

func init() {
	tinywasm.OnInit(func() {
		tinywasm.Subscribe("__NAME__")
		tinywasm.Log("__NAME__ started")
	})
	tinywasm.OnMessage(func(payload []byte) {
		count++
		line := append([]byte("#"+strconv.FormatUint(uint64(count), 10)+": "), payload...)
		tinywasm.Broadcast("__NAME__", line)
	})
	// The count, handed to the next version on a hot swap (version tag 1).
	tinywasm.OnSaveState(func() (uint32, []byte) {
		return 1, binary.LittleEndian.AppendUint32(nil, count)
	})
	tinywasm.OnRestoreState(func(version uint32, tagged bool, data []byte) bool {
		if !tagged || version != 1 || len(data) != 4 {
			return false // another version's layout: the host logs it; start afresh
		}
		count = binary.LittleEndian.Uint32(data)
		return true
	})
}

func main() {}
