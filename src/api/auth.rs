//! Bearer-token access control for `/v1/*`, installed by `api::router` as a middleware.
//!
//! With `--api-token` / `POOLD_API_TOKEN` set, every `/v1/*` request needs
//! `Authorization: Bearer <token>`; health, metrics, the spec and the docs stay open so probes
//! and scrapers need no secret. The comparison is constant-time over SHA-256 digests, so
//! neither the token's bytes nor its length leak through timing.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use super::{ApiError, AppState};

/// The name of the security scheme in the OpenAPI spec.
const SCHEME: &str = "bearer";

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.api_token
        && request.uri().path().starts_with("/v1/")
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let Some(given) = given else {
            return ApiError::Unauthorized("send Authorization: Bearer <token>").into_response();
        };
        if !bool::from(token_digest(given)[..].ct_eq(&expected[..])) {
            return ApiError::Unauthorized("the bearer token is wrong").into_response();
        }
    }
    next.run(request).await
}

/// Declares the bearer scheme and requires it (answering 401 without it) on every `/v1/*`
/// operation.
pub struct BearerOnV1;

impl utoipa::Modify for BearerOnV1 {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on /v1/* when the server runs with POOLD_API_TOKEN.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security =
                    Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
                let unauthorized = ResponseBuilder::new()
                    .description("`unauthorized`: missing or wrong bearer token")
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .insert("401".to_string(), unauthorized.into());
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// What `AppState::api_token` holds for a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value}");
        }
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
