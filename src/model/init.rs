//! Reproducible random initialisation in a process that does several things at once.
//!
//! burn draws every random parameter from one generator per device, global to the process, and
//! draws it lazily: the first time the parameter is read, which applying a weight file onto a
//! fresh module also does. Two initialisations at once in one process (a library user loading a
//! model while a run starts, tests running side by side) would interleave their draws, and a
//! seeded run would no longer be reproducible. So every random initialisation in siam runs under
//! [`lock`], one process-wide lock (re-entrant on the thread holding it), and is
//! [`materialize`]d before the lock is released; [`seeded`] does all three for one module.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

static LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    /// How many [`InitLock`]s this thread holds (the mutex is taken by the first only).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Holds the initialisation lock until dropped.
pub struct InitLock {
    _guard: Option<MutexGuard<'static, ()>>,
}

impl Drop for InitLock {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Takes the process-wide initialisation lock; a thread already holding it gets it again at
/// once (so a loader called from inside a seeded initialisation does not deadlock).
pub fn lock() -> InitLock {
    let held = DEPTH.with(|d| {
        let held = d.get() > 0;
        d.set(d.get() + 1);
        held
    });
    let guard = (!held).then(|| LOCK.lock().unwrap_or_else(|e| e.into_inner()));
    InitLock { _guard: guard }
}

/// Takes the lock and seeds `device`'s generator with `seed`.
pub fn lock_seeded(device: &Device, seed: u64) -> InitLock {
    let guard = lock();
    device.seed(seed);
    guard
}

/// Draws every lazily initialised parameter of `m` now, in module order.
pub fn materialize<M: Module>(m: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    m.visit(&mut Touch);
}

/// `build()` with `device`'s generator seeded by `seed`, every parameter drawn before it
/// returns: the same module for the same seed, whatever else the process is doing.
pub fn seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    let _lock = lock_seeded(device, seed);
    let m = build();
    materialize(&m);
    m
}

/// `build()` under the lock, every parameter drawn before it returns (a shell about to be
/// overwritten by a weight file: its draws must not land inside someone else's seeded run).
pub fn shell<M: Module>(build: impl FnOnce() -> M) -> M {
    let _lock = lock();
    let m = build();
    materialize(&m);
    m
}
