//! Starts `siam serve` as a child process on an ephemeral loopback port, and builds the index
//! it serves: the synthetic demo set written as files, indexed with a model by `siam index`.
// Shared by tests/serve.rs and benches/serve.rs; each uses a part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs the `siam` binary `bin` with `args`; panics with its stderr if it fails.
pub fn siam_ok(bin: &str, args: &[&str]) {
    let out = Command::new(bin).args(args).output().expect("running siam");
    assert!(
        out.status.success(),
        "siam {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the demo set (`per_class` images of each of its 12 labels) under `dir/demo` and
/// indexes it with `model`; returns (index folder, image folder).
pub fn demo_index(bin: &str, dir: &Path, model: &Path, per_class: usize) -> (PathBuf, PathBuf) {
    let demo = dir.join("demo");
    let n = per_class.to_string();
    siam_ok(
        bin,
        &[
            "demo-data",
            "--out",
            &demo.display().to_string(),
            "--per-class",
            &n,
        ],
    );
    let images = demo.join("images");
    let index = dir.join("index");
    siam_ok(
        bin,
        &[
            "index",
            "--model",
            &model.display().to_string(),
            "--data",
            &images.display().to_string(),
            "--out",
            &index.display().to_string(),
        ],
    );
    (index, images)
}

/// A running `siam serve`; killed when dropped.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `siam serve --index INDEX --addr 127.0.0.1:0 ARGS...` and waits for the address
    /// it prints.
    // The child is waited for when the `Server` is dropped (or above, when it fails to start);
    // clippy cannot see through the struct.
    #[allow(clippy::zombie_processes)]
    pub fn start(bin: &str, index: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--index")
            .arg(index)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting siam serve");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        let addr = rest.split('/').next().unwrap().parse().unwrap();
                        return Server {
                            addr,
                            child,
                            stderr: rx,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("siam serve did not start: {}", seen.join("\n"));
                }
            }
        }
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the exit; returns (success, the stderr
    /// lines printed after start-up).
    #[cfg(unix)]
    pub fn interrupt(mut self) -> (bool, Vec<String>) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits i32");
        // SAFETY: kill(2) on the pid of our own child process.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0, "kill(SIGINT) failed");
        let status = self.child.wait().expect("waiting for siam serve");
        let mut lines = Vec::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(10)) {
            lines.push(l);
        }
        (status.success(), lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
