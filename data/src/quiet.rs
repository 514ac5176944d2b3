//! Running third-party parsing code that may panic on a hostile file (tokenizers' JSON
//! deserialisers, burn-store's unpickler, hnsw_rs's loader) as an `Err`, without the panic's
//! message reaching the user's terminal: the error is reported once, as one line, by the caller.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// A panic caught by [`catch_quietly`]: its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs `f`; a panic inside it becomes `Err(Panicked(message))` and is not printed. Panics elsewhere (other
/// threads, or this one outside `f`) print as before: the hook installed once here defers to the
/// previous hook unless the panicking thread is inside `catch_quietly`.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(outer));
    result.map_err(|p| {
        Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the parser panicked".into()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error() {
        assert_eq!(catch_quietly(|| 3), Ok(3));
        let e = catch_quietly(|| -> u8 { panic!("bad byte {}", 7) }).unwrap_err();
        assert_eq!(e, Panicked("bad byte 7".into()));
        assert!(!QUIET.with(Cell::get));
    }
}
