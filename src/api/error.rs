//! The one HTTP error type. Every failure, including axum's own body/query rejections and
//! unknown routes, leaves as RFC 9457 `application/problem+json` with a stable snake_case
//! `code`. 5xx errors are logged with their cause and answered with a generic detail.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::JobId;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no worker offers a function named {0:?}; see GET /v1/functions")]
    UnknownFunction(String),
    #[error(
        "no worker accepts the {0} codec (a Python worker accepts it when started with --allow-pickle)"
    )]
    UnsupportedCodec(&'static str),
    #[error("no job with id {0}")]
    JobNotFound(String),
    #[error("this Idempotency-Key was used for job {0} with another request body")]
    IdempotencyKeyReused(JobId),
    #[error("job {0} is not finished; cancel it first")]
    JobNotFinished(JobId),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    TooManyQueued(String),
    #[error("the pool is closed to new jobs (POST /v1/pool/open reopens it)")]
    PoolClosed,
    #[error("poold is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    ServerBusy(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Pool(#[from] crate::pool::Error),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:poold:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case error code, e.g. `job_not_found`.
    pub code: String,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            UnknownFunction(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_function"),
            UnsupportedCodec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_codec"),
            JobNotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            JobNotFinished(_) => (StatusCode::CONFLICT, "job_not_finished"),
            IdempotencyKeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            TooManyQueued(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_queued_items"),
            PoolClosed => (StatusCode::SERVICE_UNAVAILABLE, "pool_closed"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ServerBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_busy"),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Store(crate::store::Error::Storage { full: true, .. }) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            Store(crate::store::Error::Storage { full: false, .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            Store(_) | Pool(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
            "internal error; the server log has the cause".to_string()
        } else {
            self.to_string()
        };
        let problem = Problem {
            kind: format!("urn:poold:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code: code.to_string(),
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/problem+json".parse().expect("valid header"),
        );
        let headers = response.headers_mut();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INSUFFICIENT_STORAGE
        ) {
            headers.insert(header::RETRY_AFTER, "5".parse().expect("valid header"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="poold""#.parse().expect("valid header"),
            );
        }
        response
    }
}

/// What the job service says, as a problem.
impl From<crate::jobs::Error> for ApiError {
    fn from(error: crate::jobs::Error) -> Self {
        use crate::jobs::Error as E;
        match error {
            E::Invalid(detail) => ApiError::InvalidRequest(detail),
            E::TooLarge(detail) => ApiError::PayloadTooLarge(detail),
            E::UnknownFunction(name) => ApiError::UnknownFunction(name),
            E::UnsupportedCodec(codec) => ApiError::UnsupportedCodec(codec),
            E::IdempotencyKeyReused(id) => ApiError::IdempotencyKeyReused(id),
            E::NotFound(id) => ApiError::JobNotFound(id),
            E::NotFinished(id) => ApiError::JobNotFinished(id),
            E::TooManyQueued(detail) => ApiError::TooManyQueued(detail),
            E::PoolClosed => ApiError::PoolClosed,
            E::ShuttingDown => ApiError::ShuttingDown,
            E::NotReady(detail) => ApiError::NotReady(detail),
            E::Store(e) => ApiError::Store(e),
            E::Pool(e) => ApiError::Pool(e),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(
                "the request body is larger than the server's limit".into(),
            ),
            _ => ApiError::InvalidRequest(rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}

/// `axum::extract::Query` whose rejections are problem documents.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Unknown routes.
pub async fn route_not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
