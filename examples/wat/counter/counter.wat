;; counter: counts the messages on counter.inc, publishes each new count on counter.value,
;; answers GET /m/counter (compat mode) with the count, and hands the count to its next
;; version across a hot swap: the SDK state envelope by hand (version tag 1 as 4 bytes
;; little-endian, then the count as 8 bytes little-endian).
(module
  (import "env" "publish" (func $publish (param i32 i32 i32 i32)))
  (import "env" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)

  (data (i32.const 16) "counter.inc")        ;; 11 bytes
  (data (i32.const 32) "counter.value")      ;; 13
  (data (i32.const 48) "wat counter ready")  ;; 17
  ;; 256..279: the count as decimal text (NUL-terminated for handle); 288..299: saved state

  (global $count (mut i64) (i64.const 0))
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

  ;; Write $count in decimal at 256, NUL after it; return its length.
  (func $text (result i32) (local $n i64) (local $len i32) (local $i i32) (local $c i32)
    (local.set $n (global.get $count))
    (loop $digit  ;; digits backwards from 256
      (i32.store8 (i32.add (i32.const 256) (local.get $len))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $n) (i64.const 0))))
    (block $done  ;; reverse them
      (loop $swap
        (br_if $done (i32.ge_s (local.get $i) (i32.sub (i32.sub (local.get $len) (local.get $i)) (i32.const 1))))
        (local.set $c (i32.load8_u (i32.add (i32.const 256) (local.get $i))))
        (i32.store8 (i32.add (i32.const 256) (local.get $i))
          (i32.load8_u (i32.add (i32.const 255) (i32.sub (local.get $len) (local.get $i)))))
        (i32.store8 (i32.add (i32.const 255) (i32.sub (local.get $len) (local.get $i))) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $swap)))
    (i32.store8 (i32.add (i32.const 256) (local.get $len)) (i32.const 0))
    (local.get $len))

  (func (export "init")
    (call $subscribe (i32.const 16) (i32.const 11) (i32.const 0))
    (call $log (i32.const 48) (i32.const 17)))

  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (call $publish (i32.const 32) (i32.const 13) (i32.const 256) (call $text)))

  (func (export "handle") (param $p i32) (param $n i32) (result i32)
    (drop (call $text))
    (i32.const 256))

  (func (export "save_state") (result i64)
    (i32.store (i32.const 288) (i32.const 1))
    (i64.store (i32.const 292) (global.get $count))
    (i64.or (i64.shl (i64.const 288) (i64.const 32)) (i64.const 12)))

  ;; 0: taken; 1: rejected (another layout: the host logs the state as dropped).
  (func (export "restore_state") (param $p i32) (param $n i32) (result i32)
    (if (i32.and (i32.eq (local.get $n) (i32.const 12))
                 (i32.eq (i32.load (local.get $p)) (i32.const 1)))
      (then (global.set $count (i64.load (i32.add (local.get $p) (i32.const 4))))
            (return (i32.const 0))))
    (i32.const 1))
)
