//! The web dashboard: `GET /` and `GET /ui/...` serve the hand-written page in `ui/` (HTML,
//! CSS and JavaScript modules, no build step), every file embedded in the binary so it works
//! offline. `api::router` merges this router next to the `/v1` API, outside the OpenAPI spec.
//!
//! The page is a single-page app: `/`, `/ui/jobs` and `/ui/jobs/{id}` (any `/ui/...` path that
//! is not an asset) all serve `index.html`, and the script draws the view the path names. It
//! reads only the public `/v1` API, so the static files need no token (the auth middleware
//! guards `/v1/*` only); the page asks for the token when the API answers 401.
//!
//! Every response carries a strict Content-Security-Policy (scripts, styles and requests to
//! this origin only; no inline script or style, no frames, no forms), `nosniff`, and
//! `Cache-Control: no-cache` with an `ETag`, so a browser revalidates (a 304 when nothing
//! changed) and a new binary's files are never mixed with an old page's.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::ApiError;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    /// Its name under `/ui/assets/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../ui/assets/", $name)),
        }
    };
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../ui/index.html"),
};

const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("overview.js", "text/javascript; charset=utf-8"),
    asset!("jobs.js", "text/javascript; charset=utf-8"),
    asset!("job.js", "text/javascript; charset=utf-8"),
    asset!("results.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The ETag of each file (`INDEX` first, then `ASSETS` in order): a digest of its bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header")
        })
        .collect()
});

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*view}", get(page))
        .route("/favicon.ico", get(favicon))
}

/// The page itself, for every view of the single-page app.
async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(i + 1, &headers),
        None => with_security_headers(
            ApiError::RouteNotFound(format!("/ui/assets/{name}")).into_response(),
        ),
    }
}

/// Browsers ask for `/favicon.ico` whatever the page says; answer with the page's icon.
async fn favicon(headers: HeaderMap) -> Response {
    let icon = ASSETS
        .iter()
        .position(|a| a.name == "icon.svg")
        .expect("the icon is embedded");
    serve(icon + 1, &headers)
}

/// Serve file `i` (0 is `INDEX`, then `ASSETS`), or 304 when the browser has this version.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = if i == 0 { &INDEX } else { &ASSETS[i - 1] };
    let etag = ETAGS[i].clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    response.headers_mut().insert(header::ETAG, etag);
    with_security_headers(response)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
