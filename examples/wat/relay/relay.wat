;; relay: every message on relay.in goes out on relay.out, to the bus and to browsers.
;; On relay.ctl, "stop" unsubscribes from relay.in and anything else answers "pong".
;; WebAssembly text by hand: the imports, a bump allocator and the exports of docs/abi.md.
(module
  (import "env" "publish" (func $publish (param i32 i32 i32 i32)))
  (import "env" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "env" "unsubscribe" (func $unsubscribe (param i32 i32)))
  (import "env" "ws_broadcast" (func $ws_broadcast (param i32 i32 i32 i32)))
  (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)

  (data (i32.const 16) "relay.in")          ;; 8 bytes
  (data (i32.const 32) "relay.ctl")         ;; 9
  (data (i32.const 48) "relay.out")         ;; 9
  (data (i32.const 64) "wat relay ready")   ;; 15
  (data (i32.const 80) "stopped")           ;; 7
  (data (i32.const 96) "pong")              ;; 4
  (data (i32.const 112) "stop")             ;; 4

  ;; The host asks for one block and reuses it; a bump allocator from 64 KiB is enough.
  (global $heap (mut i32) (i32.const 65536))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7))
                               (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap)
                          (i32.shl (memory.size) (i32.const 16))) (i32.const 16)) (i32.const 1)))
                        (i32.const -1))
              (then (return (i32.const 0))))))
    (local.get $p))
  (func (export "free") (param $p i32))

  ;; 1 if the $n bytes at $p are the $lit_n bytes at $lit.
  (func $same (param $p i32) (param $n i32) (param $lit i32) (param $lit_n i32) (result i32)
    (if (result i32) (i32.ne (local.get $n) (local.get $lit_n))
      (then (i32.const 0))
      (else (call $eq (local.get $p) (local.get $lit) (local.get $n)))))

  ;; 1 if the $n bytes at $a and $b are equal.
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b)))
          (then (return (i32.const 0))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  (func (export "init")
    (call $subscribe (i32.const 16) (i32.const 8) (i32.const 0))
    (call $subscribe (i32.const 32) (i32.const 9) (i32.const 0))
    (call $log (i32.const 64) (i32.const 15)))

  (func (export "on_topic_message") (param $t i32) (param $tn i32) (param $p i32) (param $n i32)
    (if (call $same (local.get $t) (local.get $tn) (i32.const 32) (i32.const 9))
      (then
        (if (call $same (local.get $p) (local.get $n) (i32.const 112) (i32.const 4))
          (then
            (call $unsubscribe (i32.const 16) (i32.const 8))
            (call $publish (i32.const 48) (i32.const 9) (i32.const 80) (i32.const 7)))
          (else (call $publish (i32.const 48) (i32.const 9) (i32.const 96) (i32.const 4))))
        (return)))
    (call $publish (i32.const 48) (i32.const 9) (local.get $p) (local.get $n))
    (call $ws_broadcast (i32.const 48) (i32.const 9) (local.get $p) (local.get $n)))
)
