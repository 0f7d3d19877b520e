// __NAME__: a tinywasm module in AssemblyScript. Every message on topic "__NAME__" goes
// back to the browsers watching that topic, numbered. Edit and save: `tinywasm dev`
// rebuilds it and swaps it in; the count survives the swap.
import {
  bytes,
  log,
  openState,
  saveState,
  STATE_REJECTED,
  STATE_TAKEN,
  subscribe,
  wsBroadcast,
} from "tinywasm";
export { malloc, free } from "tinywasm";

let count: u32 = 0;

export function init(): void {
  subscribe("__NAME__");
  log("__NAME__ started");
}

export function on_message(ptr: usize, len: i32): void {
  count++;
  const head = Uint8Array.wrap(String.UTF8.encode("#" + count.toString() + ": "));
  const line = new Uint8Array(head.length + len);
  line.set(head);
  line.set(bytes(ptr, len), head.length);
  wsBroadcast("__NAME__", line);
}

// The count, handed to the next version on a hot swap (version tag 1).
export function save_state(): u64 {
  const data = new Uint8Array(4);
  store<u32>(data.dataStart, count);
  return saveState(1, data);
}

export function restore_state(ptr: usize, len: i32): i32 {
  const state = openState(ptr, len);
  if (!state.tagged || state.version != 1 || state.data.length != 4) return STATE_REJECTED;
  count = load<u32>(state.data.dataStart);
  return STATE_TAKEN;
}
