//! A client of the agent's API, over its unix socket or over TCP with a
//! bearer token. One HTTP/1.1 connection per request: the CLI makes one or
//! two requests per run, and the benchmark opens one client per worker.

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Its unix socket.
    Unix(PathBuf),
    /// `host:port`, with the bearer token.
    Tcp {
        /// Address.
        addr: String,
        /// Bearer token.
        token: String,
    },
    /// `host:port` over TLS, with the bearer token.
    Tls {
        /// Address; its host part is the name the certificate must carry.
        addr: String,
        /// Bearer token.
        token: String,
        /// Trusts the agent's CA ([`crate::api::tls::client_config`]).
        tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    },
}

/// An API error as the agent reported it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} ({status})")]
pub struct AgentError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `kind` of the error body.
    pub kind: String,
    /// The `error` of the error body.
    pub message: String,
}

/// A client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    /// A client of the agent at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Client { endpoint }
    }

    /// GET `path`, decoding JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(Method::GET, path, None).await
    }

    /// POST `path` with a JSON body (or none).
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: Option<&B>) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).map(|v| ("application/json", v))).transpose()?;
        self.send(Method::POST, path, body).await
    }

    /// DELETE `path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(Method::DELETE, path, None).await
    }

    /// PUT raw bytes of `content_type` to `path`.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<T> {
        self.send(Method::PUT, path, Some((content_type, bytes))).await
    }

    /// PUT a file's bytes to `path` as they are read, without holding the
    /// file in memory.
    pub async fn put_file<T: DeserializeOwned>(&self, path: &str, file: tokio::fs::File) -> Result<T> {
        let frames = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|chunk| {
            chunk.map(hyper::body::Frame::data).map_err(|e| anyhow!("reading the file to upload: {e}"))
        });
        let body = Some(("application/octet-stream", StreamBody::new(frames).boxed_unsync()));
        let (status, bytes) = self.exchange(Method::PUT, path, body).await?;
        decode(path, status, &bytes)
    }

    /// Sends a request and decodes the JSON answer; an error status becomes
    /// an [`AgentError`] carrying the agent's message.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<T> {
        let (status, bytes) = self.raw(method, path, body).await?;
        decode(path, status, &bytes)
    }

    /// Sends a request and returns the status and body as they are.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes)> {
        let body = body.map(|(content_type, bytes)| {
            (content_type, Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync())
        });
        self.exchange(method, path, body).await
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Body)>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut request = Request::builder().method(method).uri(path).header("host", "locus");
        if let Endpoint::Tcp { token, .. } | Endpoint::Tls { token, .. } = &self.endpoint {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, body)) => request.header("content-type", content_type).body(body)?,
            None => request.body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync())?,
        };
        let response = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.with_context(|| {
                    format!("cannot reach the agent at {} (is `locus agent` running?)", path.display())
                })?;
                over(stream, request).await?
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .with_context(|| format!("cannot reach the agent at {addr}"))?;
                over(stream, request).await?
            }
            Endpoint::Tls { addr, tls, .. } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .with_context(|| format!("cannot reach the agent at {addr}"))?;
                let name = crate::api::tls::server_name(addr)?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS with the agent at {addr}"))?;
                over(stream, request).await?
            }
        };
        let status = response.status();
        let bytes = response.into_body().collect().await.context("reading the agent's answer")?.to_bytes();
        Ok((status, bytes))
    }
}

/// A request body: bytes in memory or a stream.
type Body = UnsyncBoxBody<Bytes, anyhow::Error>;

/// Decodes a JSON answer; an error status becomes an [`AgentError`].
fn decode<T: DeserializeOwned>(path: &str, status: StatusCode, bytes: &[u8]) -> Result<T> {
    if !status.is_success() {
        let body: Option<crate::api::ErrorBody> = serde_json::from_slice(bytes).ok();
        let (kind, message) = match body {
            Some(b) => (b.kind, b.error),
            None => ("unknown".into(), String::from_utf8_lossy(bytes).into_owned()),
        };
        return Err(AgentError { status, kind, message }.into());
    }
    serde_json::from_slice(bytes).with_context(|| format!("decoding the agent's answer to {path}"))
}

async fn over<S>(stream: S, request: Request<Body>) -> Result<hyper::Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| anyhow!("request to the agent failed: {e}"))
}
