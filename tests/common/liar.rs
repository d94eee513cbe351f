//! A lying S3 region for the tests: a reverse proxy in front of a real Garage server that
//! forwards every request unchanged (signatures and all) and acknowledges every write as Garage
//! does, but hands back other bytes than were stored for layer objects — a flipped byte in the
//! middle of every GET of `/layers/`. To its clients it is a region that stores other bytes
//! than it acknowledges.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;

struct Upstream {
    port: u16,
    client: reqwest::Client,
}

pub struct Liar {
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl Liar {
    /// Starts the proxy in front of `127.0.0.1:upstream` on a free port of its own.
    pub fn start(upstream: u16) -> Liar {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the liar");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let state = Arc::new(Upstream {
                    port: upstream,
                    client: reqwest::Client::new(),
                });
                let app = axum::Router::new().fallback(forward).with_state(state);
                let _ = axum::serve(listener, app).await;
            });
        });
        Liar {
            port,
            _thread: thread,
        }
    }

    /// The regions.toml entry of the lying region (Garage's credentials, the liar's port).
    pub fn region_toml(&self, garage: &super::garage::Garage, name: &str, prefix: &str) -> String {
        garage.region_toml(name, prefix).replace(
            &format!(":{}\"", garage.s3_port),
            &format!(":{}\"", self.port),
        )
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        let n = k.as_str();
        if n != "content-length" && n != "transfer-encoding" && n != "connection" {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn forward(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let url = format!("http://127.0.0.1:{}{path}", up.port);
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let sent = up
        .client
        .request(parts.method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .unwrap()
        }
    };
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    copy_headers(resp.headers(), &mut out_headers);
    let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
    if parts.method == Method::GET && status.is_success() && path.contains("/layers/") {
        let middle = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(middle) {
            *b ^= 0xff;
        }
    }
    let mut r = Response::builder().status(status);
    if let Some(h) = r.headers_mut() {
        *h = out_headers;
    }
    r.body(Body::from(bytes)).unwrap()
}
