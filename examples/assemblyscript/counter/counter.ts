// counter: counts the messages on counter.inc, publishes each new count on counter.value,
// answers GET /m/counter (compat mode) with the count, and hands the count to its next
// version across a hot swap (state version 1: the count as 8 bytes little-endian).
import {
  compatAnswer,
  log,
  openState,
  publishText,
  saveState,
  STATE_REJECTED,
  STATE_TAKEN,
  subscribe,
} from "tinywasm";
export { malloc, free } from "tinywasm";

const STATE_VERSION: u32 = 1;
let count: u64 = 0;

export function init(): void {
  subscribe("counter.inc");
  log("assemblyscript counter ready");
}

export function on_message(ptr: usize, len: i32): void {
  count++;
  publishText("counter.value", count.toString());
}

export function handle(ptr: usize, len: i32): usize {
  return compatAnswer(count.toString());
}

export function save_state(): u64 {
  const data = new Uint8Array(8);
  store<u64>(data.dataStart, count);
  return saveState(STATE_VERSION, data);
}

export function restore_state(ptr: usize, len: i32): i32 {
  const state = openState(ptr, len);
  if (!state.tagged || state.version != STATE_VERSION || state.data.length != 8) {
    return STATE_REJECTED; // another layout: the host logs it, we start from 0
  }
  count = load<u64>(state.data.dataStart);
  return STATE_TAKEN;
}
