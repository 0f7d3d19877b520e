;; __NAME__: a tinywasm module in WebAssembly text. Every message on topic "__NAME__"
;; goes back to the browsers watching that topic. Edit and save: `tinywasm dev` rebuilds
;; it and swaps it in; the count of messages survives the swap.
(module
  (import "env" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "env" "ws_broadcast" (func $ws_broadcast (param i32 i32 i32 i32)))
  (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "__NAME__")
  (data (i32.const 512) "started")
  (global $topic_len i32 (i32.const __LEN__))
  (global $count (mut i32) (i32.const 0))
  ;; A bump allocator from 64 KiB up; free() gives everything back once the last block is.
  (global $next (mut i32) (i32.const 65536))
  (global $live (mut i32) (i32.const 0))

  (func $init (export "init")
    (call $subscribe (i32.const 16) (global.get $topic_len) (i32.const 0))
    (call $log (i32.const 512) (i32.const 7)))

  (func $on_message (export "on_message") (param $ptr i32) (param $len i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (call $ws_broadcast (i32.const 16) (global.get $topic_len) (local.get $ptr) (local.get $len)))

  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)) (then (return (i32.const 0))))))
    (global.set $live (i32.add (global.get $live) (i32.const 1)))
    (local.get $ptr))

  (func $free (export "free") (param $ptr i32)
    (global.set $live (i32.sub (global.get $live) (i32.const 1)))
    (if (i32.eqz (global.get $live)) (then (global.set $next (i32.const 65536)))))

  ;; The count, handed to the next version on a hot swap: version tag 1, then the count.
  (func $save_state (export "save_state") (result i64)
    (i32.store (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (global.get $count))
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 8)))

  (func $restore_state (export "restore_state") (param $ptr i32) (param $len i32) (result i32)
    (if (i32.or (i32.ne (local.get $len) (i32.const 8))
                (i32.ne (i32.load (local.get $ptr)) (i32.const 1)))
      (then (return (i32.const 1))))
    (global.set $count (i32.load offset=4 (local.get $ptr)))
    (i32.const 0))
)
