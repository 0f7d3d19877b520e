//go:build wasip1

package tinywasm

import "encoding/binary"

// State handoff across a hot swap, in the SDK state envelope every language's SDK shares:
// the version tag as 4 bytes little-endian, then the data.

var (
	onSave    func() (version uint32, data []byte)
	onRestore func(version uint32, tagged bool, data []byte) bool
)

// OnSaveState registers what the old version hands over during a hot swap.
func OnSaveState(f func() (version uint32, data []byte)) { onSave = f }

// OnRestoreState registers what the new version does with the old version's state.
// tagged is false when the bytes are too short to carry a version tag. Return false for
// state it cannot read: the host logs that the state was dropped.
func OnRestoreState(f func(version uint32, tagged bool, data []byte) bool) { onRestore = f }

// StateEnvelope returns data tagged with version, as save_state hands it over.
func StateEnvelope(version uint32, data []byte) []byte {
	out := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(data)), version)
	return append(out, data...)
}

//go:wasmexport save_state
func hostSaveState() uint64 {
	if onSave == nil {
		Log("no OnSaveState handler: no state handed over")
		return 0
	}
	version, data := onSave()
	return Pack(hold("state", StateEnvelope(version, data)))
}

// restore_state's result: 0 taken, 1 rejected (the host logs the state as dropped).
//
//go:wasmexport restore_state
func hostRestoreState(ptr, n uint32) int32 {
	data := view(ptr, n)
	taken := false
	switch {
	case len(data) == 0:
		taken = true // nothing was handed over: nothing is lost
	case onRestore == nil: // no handler registered: the state is dropped, and the host says so
	case len(data) < 4:
		taken = onRestore(0, false, data)
	default:
		taken = onRestore(binary.LittleEndian.Uint32(data), true, data[4:])
	}
	if taken {
		return 0
	}
	return 1
}
