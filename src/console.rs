//! Printing that a closed pipe cannot turn into a crash.
//!
//! `println!` and `eprintln!` panic when the reader of stdout or stderr went away
//! (`siam query ... --json | head -1`, `siam train 2>&1 | head -3`): Rust ignores SIGPIPE, so the
//! write returns `EPIPE` and the macros panic on it. Everything siam's commands print goes
//! through these functions instead: a failed write ends the printing, never the work (a
//! training run whose stderr was closed still finishes and writes its model).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

fn write_line(w: &mut dyn Write, closed: &AtomicBool, args: fmt::Arguments<'_>) -> bool {
    if closed.load(Ordering::Relaxed) {
        return false;
    }
    let ok = w
        .write_fmt(args)
        .and_then(|()| w.write_all(b"\n"))
        .and_then(|()| w.flush());
    if ok.is_err() {
        closed.store(true, Ordering::Relaxed);
    }
    ok.is_ok()
}

/// Prints one line to stdout; `false` once stdout is closed (later lines are dropped).
pub fn out_line(args: fmt::Arguments<'_>) -> bool {
    write_line(&mut std::io::stdout().lock(), &STDOUT_CLOSED, args)
}

/// Prints one line to stderr; `false` once stderr is closed (later lines are dropped).
pub fn err_line(args: fmt::Arguments<'_>) -> bool {
    write_line(&mut std::io::stderr().lock(), &STDERR_CLOSED, args)
}

/// Whether stderr was found closed (progress bars stop drawing then).
pub fn stderr_closed() -> bool {
    STDERR_CLOSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_pipe_ends_printing_quietly() {
        let closed = AtomicBool::new(false);
        assert!(!write_line(&mut Closed, &closed, format_args!("x")));
        assert!(closed.load(Ordering::Relaxed));
        let mut v = Vec::new();
        assert!(!write_line(&mut v, &closed, format_args!("y")));
        assert!(v.is_empty());
        let open = AtomicBool::new(false);
        assert!(write_line(&mut v, &open, format_args!("a {}", 1)));
        assert_eq!(v, b"a 1\n");
    }
}
