//! The tests' HTTP client: GETs against `cairn up`'s API and metrics on 127.0.0.1.

use serde_json::Value;

/// HTTP GET of `http://127.0.0.1:PORT/PATH` with a real HTTP client (chunked bodies, keep-alive
/// and all): `(status, body)`, or `None` while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[])
}

/// [`http_get`] with extra request headers (`Host` included: it replaces the default one). Runs
/// on a thread of its own so that synchronous and async tests can both call it.
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("HTTP client");
            let mut request = client.get(&url);
            for (k, v) in &headers {
                request = request.header(k.as_str(), v.as_str());
            }
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    })
    .join()
    .expect("HTTP thread")
}

/// The JSON body of a `200 OK` answer to GET `path`, `None` otherwise.
pub fn api(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http_get(port, path)?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
