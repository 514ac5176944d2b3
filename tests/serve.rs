//! `siam serve` over real HTTP on an ephemeral loopback port: text queries, image uploads,
//! path queries (allowed below `--allow-paths`, refused elsewhere), `k` bounds, health and
//! info, thumbnails by id, every kind of bad request (a 4xx with a JSON error, after which the
//! server still answers), the rate limit, and a graceful stop on Ctrl-C.
//!
//! The index is the synthetic demo set written as files and indexed by `siam index` with the
//! tiny Hugging Face CLIP fixture (the weights of `tests/fixtures/clip/hf_vit`).

#[path = "support/http.rs"]
mod http;
#[path = "support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_siam");
/// Images per label of the demo set indexed here (12 labels).
const PER_CLASS: usize = 3;
const IMAGES: usize = 12 * PER_CLASS;

struct Fixture {
    index: PathBuf,
    images: PathBuf,
    root: PathBuf,
}

/// The index, built once per test run under cargo's target tmp folder.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-test");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/hf_vit");
        let (index, images) = server::demo_index(BIN, &root, &model, PER_CLASS);
        Fixture {
            index,
            images,
            root,
        }
    })
}

fn start(args: &[&str]) -> Server {
    Server::start(BIN, &fixture().index, args)
}

fn red_circle() -> PathBuf {
    fixture().images.join("train/red_circle/0000.png")
}

/// Asserts a JSON error with `status` whose message contains `needle`.
fn assert_error(r: &http::Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

fn scores(hits: &serde_json::Value) -> Vec<f64> {
    hits.as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect()
}

#[test]
fn text_query_answers_what_siam_query_answers() {
    let s = start(&[]);
    let text = "a large red circle on a white background";
    let r = http::post_json(
        s.addr,
        "/api/search",
        &serde_json::json!({ "text": text, "k": 5, "exact": true }).to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["query"]["text"], text);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 5);
    assert_eq!(v["texts"].as_array().unwrap().len(), 5);
    let sc = scores(&v["images"]);
    assert!(sc.windows(2).all(|w| w[0] >= w[1]), "{sc:?}");
    for (i, h) in images.iter().enumerate() {
        assert_eq!(h["rank"], i + 1);
        assert_eq!(
            h["thumbnail"],
            format!("/api/images/{}", h["id"].as_u64().unwrap())
        );
    }
    // The same brute-force answer as `siam query --exact` on the same index.
    let out = std::process::Command::new(BIN)
        .args(["query", "--text", text, "--k", "5", "--exact", "--json"])
        .arg("--index")
        .arg(&fixture().index)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_hits = cli[0]["hits"].as_array().unwrap();
    for (a, b) in images.iter().zip(cli_hits) {
        assert_eq!(a["name"], b["name"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6);
    }
    // Its thumbnail is a JPEG of the indexed image, at most 256 px a side.
    let t = http::get(s.addr, images[0]["thumbnail"].as_str().unwrap()).unwrap();
    assert_eq!(t.status, 200);
    assert_eq!(t.header("content-type"), Some("image/jpeg"));
    let img = image::load_from_memory(&t.body).unwrap();
    assert!(img.width() <= 256 && img.height() <= 256 && img.width() > 0);
}

#[test]
fn uploaded_image_finds_itself_first() {
    let s = start(&[]);
    let bytes = std::fs::read(red_circle()).unwrap();
    let r = http::request(
        s.addr,
        "POST",
        "/api/search/image?k=3&exact=true",
        &[("Content-Type", "image/png")],
        &bytes,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["query"]["image"]["bytes"], bytes.len());
    let top = &v["images"][0];
    assert_eq!(top["name"], red_circle().display().to_string());
    assert!((top["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{top}");
    assert_eq!(v["images"].as_array().unwrap().len(), 3);
    assert_eq!(v["texts"].as_array().unwrap().len(), 3);
}

#[test]
fn path_queries_only_below_allow_paths() {
    let f = fixture();
    let q = |s: &Server, path: &Path| {
        http::post_json(
            s.addr,
            "/api/search",
            &serde_json::json!({ "path": path, "k": 2, "exact": true }).to_string(),
        )
        .unwrap()
    };
    // Off unless --allow-paths is given.
    let s = start(&[]);
    assert_error(&q(&s, &red_circle()), 403, "--allow-paths");
    drop(s);
    let allowed = f.images.display().to_string();
    let s = start(&["--allow-paths", &allowed]);
    let r = q(&s, &red_circle());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["images"][0]["name"],
        red_circle().display().to_string()
    );
    // Outside the folder: another file, a `..` escape, a symbolic link pointing out.
    let outside = f.root.join("outside.png");
    std::fs::copy(red_circle(), &outside).unwrap();
    assert_error(&q(&s, &outside), 403, "outside");
    assert_error(&q(&s, &f.images.join("../outside.png")), 403, "outside");
    #[cfg(unix)]
    {
        let link = f.images.join("train/red_circle/link.png");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert_error(&q(&s, &link), 403, "outside");
        std::fs::remove_file(&link).unwrap();
    }
    assert_error(&q(&s, &f.images.join("nope.png")), 403, "nope.png");
}

#[test]
fn k_is_bounded_and_answers_never_exceed_the_index() {
    let s = start(&["--max-k", "50"]);
    let k = |k: i64| {
        http::post_json(
            s.addr,
            "/api/search",
            &serde_json::json!({ "text": "a blue star", "k": k }).to_string(),
        )
        .unwrap()
    };
    assert_error(&k(0), 400, "k = 0");
    assert_error(&k(51), 400, "between 1 and 50");
    assert_eq!(k(-1).status, 422);
    let all = k(50).json();
    // 36 images and 12 label texts: every one of them, each once.
    assert_eq!(all["images"].as_array().unwrap().len(), IMAGES);
    assert_eq!(all["texts"].as_array().unwrap().len(), 12);
    let one = k(1).json();
    assert_eq!(one["images"].as_array().unwrap().len(), 1);
    // Default k.
    let r = http::post_json(s.addr, "/api/search", r#"{"text": "a blue star"}"#).unwrap();
    assert_eq!(r.json()["k"], 10);
}

#[test]
fn health_info_and_page() {
    let s = start(&[]);
    let h = http::get(s.addr, "/health").unwrap();
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let i = http::get(s.addr, "/api/info").unwrap().json();
    assert_eq!(i["images"], IMAGES);
    assert_eq!(i["texts"], 12);
    assert_eq!(i["thumbnails"], IMAGES);
    assert_eq!(i["dim"], 16);
    assert_eq!(i["path_queries"], false);
    let p = http::get(s.addr, "/").unwrap();
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8(p.body).unwrap();
    assert!(html.contains("/api/search") && html.contains("drop"));
    // Self-contained: nothing loaded from another host.
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[test]
fn bad_requests_get_a_json_4xx_and_the_server_keeps_serving() {
    let s = start(&["--max-body-mb", "2"]);
    let a = s.addr;
    // A non-image upload.
    let r = http::request(a, "POST", "/api/search/image", &[], b"hello, not an image").unwrap();
    assert_error(&r, 415, "not an image");
    // A truncated PNG.
    let png = std::fs::read(red_circle()).unwrap();
    let r = http::request(a, "POST", "/api/search/image", &[], &png[..png.len() / 2]).unwrap();
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert!(r.json()["error"].is_string());
    // An empty upload.
    assert_error(
        &http::request(a, "POST", "/api/search/image", &[], b"").unwrap(),
        400,
        "empty",
    );
    // A 200 MB body, announced: refused before a byte of it is read.
    let head = format!(
        "POST /api/search/image HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        200usize << 20
    );
    assert_error(
        &http::raw(a, head.as_bytes()).unwrap(),
        413,
        "over the limit",
    );
    // A body over the limit without a length (chunked), cut off as it streams in.
    let chunk = vec![b'x'; 1 << 20];
    let mut body = format!(
        "POST /api/search/image HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert_error(&http::raw(a, &body).unwrap(), 413, "");
    // Malformed JSON, a wrong field, a missing content type, neither text nor path, both.
    assert_error(
        &http::post_json(a, "/api/search", r#"{"text": "a red"#).unwrap(),
        400,
        "",
    );
    assert_error(
        &http::post_json(a, "/api/search", r#"{"txt": "a red circle"}"#).unwrap(),
        422,
        "txt",
    );
    assert_error(
        &http::request(a, "POST", "/api/search", &[], br#"{"text": "x"}"#).unwrap(),
        415,
        "Content-Type",
    );
    assert_error(
        &http::post_json(a, "/api/search", r#"{"k": 3}"#).unwrap(),
        400,
        "exactly one",
    );
    assert_error(
        &http::post_json(a, "/api/search", r#"{"text": "a", "path": "/x"}"#).unwrap(),
        400,
        "exactly one",
    );
    assert_error(
        &http::post_json(a, "/api/search", r#"{"text": "   "}"#).unwrap(),
        400,
        "empty",
    );
    // k = 0, a bad query string.
    assert_error(
        &http::post_json(a, "/api/search", r#"{"text": "a red circle", "k": 0}"#).unwrap(),
        400,
        "k = 0",
    );
    assert_error(
        &http::request(a, "POST", "/api/search/image?k=zero", &[], &png).unwrap(),
        400,
        "",
    );
    // An unknown route, a wrong method, thumbnails that do not exist.
    assert_error(&http::get(a, "/api/nothing").unwrap(), 404, "/api/nothing");
    assert_error(&http::get(a, "/api/search").unwrap(), 405, "GET");
    assert_error(&http::get(a, "/api/images/36").unwrap(), 404, "image 36");
    assert_error(&http::get(a, "/api/images/abc").unwrap(), 400, "");
    // Still serving.
    let r = http::post_json(a, "/api/search", r#"{"text": "a red circle", "k": 2}"#).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["images"].as_array().unwrap().len(), 2);
    let r = http::request(a, "POST", "/api/search/image?k=2", &[], &png).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn rate_limit_answers_429_then_recovers() {
    let s = start(&["--rate-limit", "2", "--burst", "2"]);
    let q = || {
        http::post_json(
            s.addr,
            "/api/search",
            r#"{"text": "a green cross", "k": 1}"#,
        )
        .unwrap()
    };
    assert_eq!(q().status, 200);
    assert_eq!(q().status, 200);
    let r = q();
    assert_error(&r, 429, "too many searches");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Health and thumbnails are not rate limited.
    assert_eq!(http::get(s.addr, "/health").unwrap().status, 200);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(q().status, 200);
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_gracefully() {
    let s = start(&[]);
    assert_eq!(http::get(s.addr, "/health").unwrap().status, 200);
    let addr = s.addr;
    let (ok, lines) = s.interrupt();
    assert!(ok, "exit status after SIGINT: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");
    assert!(std::net::TcpStream::connect(addr).is_err());
}
