//! The HTTP side of `siam serve`: axum routes, JSON errors, the request-size limit, the
//! per-client rate limit, and [`serve`] with graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::search::{Answer, Query, SearchService};
use super::ServeError;
use siam_data::preprocess::ImageError;

/// `k` when a request names none.
pub const DEFAULT_K: usize = 10;

/// Limits of one server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body in bytes (an uploaded image, a JSON query); larger is a 413.
    pub max_body_bytes: usize,
    /// Sustained searches per second per client address (token-bucket refill); 0 turns the
    /// rate limit off.
    pub rate_per_sec: f64,
    /// Searches a client may make at once before the rate applies (bucket size).
    pub burst: u32,
    /// Searches computed at the same time (the rest wait their turn); each runs on tokio's
    /// blocking pool.
    pub concurrent_searches: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            rate_per_sec: 20.0,
            burst: 40,
            concurrent_searches: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match &e {
            ServeError::BadQuery(_) | ServeError::BadK { .. } => StatusCode::BAD_REQUEST,
            ServeError::Image(img) => match **img {
                ImageError::NotAnImage { .. } | ImageError::UnsupportedFormat { .. } => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                ImageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ServeError::PathRefused(_) => StatusCode::FORBIDDEN,
            ServeError::NoSuchImage { .. } | ServeError::NoThumbnail { .. } => {
                StatusCode::NOT_FOUND
            }
            ServeError::NotAnIndex { .. }
            | ServeError::Index(_)
            | ServeError::Encoder(_)
            | ServeError::Dataset(_)
            | ServeError::Model { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

/// A JSON body whose rejections (malformed JSON, wrong fields, wrong content type, too large)
/// are JSON errors.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

/// The raw body, with its rejections (too large, cut short) as JSON errors.
struct RawBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

/// `POST /api/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    /// A text query.
    text: Option<String>,
    /// An image file on the server (needs `--allow-paths`).
    path: Option<PathBuf>,
    /// Answers per list.
    k: Option<usize>,
    /// Brute force instead of HNSW.
    #[serde(default)]
    exact: bool,
}

/// Query string of `POST /api/search/image`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageParams {
    k: Option<usize>,
    #[serde(default)]
    exact: bool,
}

/// A search answer.
#[derive(Debug, Serialize)]
struct SearchResponse {
    query: serde_json::Value,
    k: usize,
    exact: bool,
    took_ms: f64,
    #[serde(flatten)]
    answer: Answer,
}

/// Per-client token buckets: each address holds up to `burst` tokens, refilled at `rate` per
/// second; a search takes one, and a client with none left gets a 429.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Client addresses tracked before full buckets are forgotten.
const RATE_CLIENTS: usize = 10_000;

impl RateLimiter {
    /// Takes a token for `ip`; `Err(seconds until one is free)` if there is none.
    fn take(&self, ip: IpAddr) -> Result<(), f64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= RATE_CLIENTS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rate)
        }
    }
}

struct AppState {
    service: Arc<SearchService>,
    searches: Semaphore,
}

/// The routes of the server (see the module docs of [`crate::serve`]).
pub fn router(service: Arc<SearchService>, opts: &ServeOptions) -> Router {
    let state = Arc::new(AppState {
        service,
        searches: Semaphore::new(opts.concurrent_searches.max(1)),
    });
    let mut searches = Router::new()
        .route("/api/search", post(search_json))
        .route("/api/search/image", post(search_image));
    if opts.rate_per_sec > 0.0 {
        let limiter = Arc::new(RateLimiter {
            rate: opts.rate_per_sec,
            burst: f64::from(opts.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        });
        searches = searches.layer(middleware::from_fn_with_state(limiter, rate_limit));
    }
    let max_body = opts.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/api/info", get(info))
        .route("/api/images/{id}", get(thumbnail))
        .merge(searches)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            max_body,
            content_length_limit,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish (graceful shutdown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Refuses a body announced larger than the limit before reading any of it (a body without a
/// length is cut off at the limit by [`DefaultBodyLimit`] as it streams in).
async fn content_length_limit(State(max): State<usize>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > max as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes is over the limit of {max} bytes"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn rate_limit(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    match limiter.take(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many searches from {ip}: at most {} per second (burst {}); retry in {wait:.2} s",
                    limiter.rate, limiter.burst
                ),
            )
            .into_response();
            let secs = wait.ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(super::page::PAGE)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn info(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(app.service.info()).unwrap_or_default();
    v["default_k"] = DEFAULT_K.into();
    Json(v)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Runs `f` on the blocking pool once one of the search permits is free.
async fn blocking<T: Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&SearchService) -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = app
        .searches
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"))?;
    let service = Arc::clone(&app.service);
    tokio::task::spawn_blocking(move || f(service.as_ref()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("search failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

async fn run_search(
    app: &Arc<AppState>,
    query: Query,
    described: serde_json::Value,
    k: Option<usize>,
    exact: bool,
) -> Result<Json<SearchResponse>, ApiError> {
    let k = k.unwrap_or(DEFAULT_K);
    app.service.check_k(k)?;
    let start = Instant::now();
    let answer = blocking(app, move |s| s.search(&query, k, exact)).await?;
    Ok(Json(SearchResponse {
        query: described,
        k,
        exact,
        took_ms: start.elapsed().as_secs_f64() * 1e3,
        answer,
    }))
}

async fn search_json(
    State(app): State<Arc<AppState>>,
    JsonBody(req): JsonBody<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let (query, described) =
        match (req.text, req.path) {
            (Some(t), None) => {
                let d = serde_json::json!({ "text": t });
                (Query::Text(t), d)
            }
            (None, Some(p)) => {
                let d = serde_json::json!({ "path": p });
                (Query::Path(p), d)
            }
            _ => return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"text\" or \"path\" (upload an image to /api/search/image)",
            )),
        };
    run_search(&app, query, described, req.k, req.exact).await
}

async fn search_image(
    State(app): State<Arc<AppState>>,
    params: Result<axum::extract::Query<ImageParams>, axum::extract::rejection::QueryRejection>,
    RawBody(body): RawBody,
) -> Result<Json<SearchResponse>, ApiError> {
    let params = params
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?
        .0;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is empty: send the image file's bytes",
        ));
    }
    let described = serde_json::json!({ "image": { "bytes": body.len() } });
    run_search(
        &app,
        Query::ImageBytes(body.to_vec()),
        described,
        params.k,
        params.exact,
    )
    .await
}

async fn thumbnail(
    State(app): State<Arc<AppState>>,
    id: Result<Path<usize>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let jpeg = blocking(&app, move |s| s.thumbnail(id)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        jpeg,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let l = RateLimiter {
            rate: 2.0,
            burst: 3.0,
            buckets: Mutex::new(HashMap::new()),
        };
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..3 {
            assert!(l.take(a).is_ok());
        }
        // Empty: the next token comes after 1 / rate = 0.5 s.
        let wait = l.take(a).unwrap_err();
        assert!(wait > 0.4 && wait <= 0.5, "{wait}");
        // Another client has its own bucket.
        assert!(l.take(b).is_ok());
        std::thread::sleep(Duration::from_millis(520));
        assert!(l.take(a).is_ok());
        assert!(l.take(a).is_err());
    }
}
