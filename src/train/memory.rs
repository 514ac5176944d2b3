//! glibc's allocator, tuned to the allocation pattern of training on the CPU backend.
//!
//! Every op of burn's flex backend allocates its output, so a step allocates and frees the same
//! large buffers again and again: activations, their gradients, and the dense gradient of the
//! 49,408-row token table (25 MB at width 128). glibc (`malloc/malloc.c`) serves blocks above
//! its mmap threshold (128 KiB at first, rising with each freed mapping) with fresh `mmap`s and
//! hands freed memory at the top of the heap back to the OS above its trim threshold, so every
//! step touches hundreds of MB of new pages: a page fault and a page clear in the kernel for
//! each 4 KiB. [`keep_freed_memory`] fixes the mmap threshold at its maximum (32 MiB on 64-bit
//! glibc) and the trim threshold at 1 GiB, so freed blocks are reused by the next step; the
//! process keeps its peak heap instead of returning it between steps.
//!
//! Measured on the tiny recipe (`benches/tiny.rs`, 13 steps with the set-up, flex, the same
//! effect through `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824`):
//! 427k minor page faults and 1.02 s of system time before, 73k and 0.22 s after.

/// Raises glibc's mmap and trim thresholds once per process (see the module documentation).
/// Does nothing on other C libraries and platforms.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it is called before the
            // training's buffers exist, and a rejected value leaves glibc's default.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}
