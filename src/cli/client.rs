//! HTTP for the CLI: one `reqwest` client with the server's base URL and the Bearer token, and
//! problem documents turned into readable errors.

use std::io::Write;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, header};
use serde_json::Value;

use super::Server;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &Server) -> anyhow::Result<Self> {
        let base = server.url.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!(
                "{base}: this client speaks plain HTTP only; reach a TLS proxy's backend over http://"
            );
        }
        if !base.starts_with("http://") {
            bail!("--url must start with http://, got {base:?}");
        }
        let token = std::env::var("POOLD_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("poold-cli/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("cannot build the HTTP client")?,
            base,
            token,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Send, and fail with the server's problem `detail` unless the status is a success.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach poold at {}: {}", self.base, error_chain(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(problem(response).await)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.send(self.request(Method::GET, path)).await?;
        response
            .json()
            .await
            .context("the server's answer is not JSON")
    }

    pub async fn post_json(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        response
            .json()
            .await
            .context("the server's answer is not JSON")
    }

    /// Stream an NDJSON answer to `out` as it arrives.
    pub async fn copy_ndjson(&self, path: &str, out: &mut impl Write) -> anyhow::Result<()> {
        let request = self
            .request(Method::GET, path)
            .header(header::ACCEPT, "application/x-ndjson");
        let mut body = self.send(request).await?.bytes_stream();
        while let Some(bytes) = body.next().await {
            let bytes =
                bytes.map_err(|e| anyhow!("the download broke off: {}", error_chain(&e)))?;
            match out.write_all(&bytes) {
                // The reader went away (`| head`): stop quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                written => written?,
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// An error answer as an error: the problem document's detail and code when there is one.
pub async fn problem(response: Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(p) if p["detail"].is_string() => anyhow!(
            "{} ({}, HTTP {})",
            p["detail"].as_str().unwrap_or_default(),
            p["code"].as_str().unwrap_or("error"),
            status.as_u16()
        ),
        _ => anyhow!("HTTP {status}: {}", text.trim()),
    }
}

/// An error with its causes, which reqwest keeps in its source chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
