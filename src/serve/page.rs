//! The search page served at `/`: one self-contained HTML file (inline CSS and JavaScript, no
//! CDN, no external font), embedded in the binary. A person types a text or drops an image and
//! sees the nearest indexed images as ranked thumbnails with their cosine scores, and the
//! nearest label texts or captions. `/?q=TEXT` runs that text query on load.

/// The page.
pub const PAGE: &str = include_str!("page.html");
