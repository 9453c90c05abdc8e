//! Viewer clients as other people's code would write them.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a viewer WebSocket; `Err` carries the HTTP status of a refused handshake.
pub async fn ws_connect(url: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

pub enum WsNext {
    Json(Value),
    Closed(Option<CloseFrame>),
}

/// The next data message (pings are answered by the library), or the close.
pub async fn ws_next(ws: &mut Ws, limit: Duration) -> WsNext {
    loop {
        let msg = tokio::time::timeout(limit, ws.next())
            .await
            .expect("no message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return WsNext::Json(serde_json::from_str(&t).expect("JSON text"))
            }
            Some(Ok(Message::Close(c))) => return WsNext::Closed(c),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return WsNext::Closed(None),
        }
    }
}

pub async fn ws_json(ws: &mut Ws) -> Value {
    match ws_next(ws, Duration::from_secs(10)).await {
        WsNext::Json(v) => v,
        WsNext::Closed(c) => panic!("stream closed: {c:?}"),
    }
}

pub async fn ws_close(mut ws: Ws) {
    let _ = ws.send(Message::Close(None)).await;
}

/// A Server-Sent Events client in the way of a browser's EventSource: it parses `id:`,
/// `event:`, `data:` and `retry:` fields and remembers the last event id for resuming.
pub struct Sse {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    pub last_event_id: Option<String>,
    pub retry_ms: Option<u64>,
}

#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Sse {
    /// Opens a stream; `Err` carries the status and body of a refusal.
    pub async fn connect(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<Sse, (u16, Value)> {
        let mut req = http
            .get(url)
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        if res.status() != 200 {
            let status = res.status().as_u16();
            return Err((status, res.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            stream: res.bytes_stream().boxed(),
            buf: Vec::new(),
            last_event_id: last_event_id.map(str::to_string),
            retry_ms: None,
        })
    }

    /// The next event (comments and retry-only blocks are consumed on the way).
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut id, mut event, mut data) = (None, "message".to_string(), Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_string());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry_ms = v.parse().ok();
                    }
                }
                if data.is_empty() {
                    continue;
                }
                if id.is_some() {
                    self.last_event_id = id.clone();
                }
                return Some(SseEvent {
                    id,
                    event,
                    data: data.join("\n"),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("no SSE data in time")?
                .ok()?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    pub async fn json(&mut self) -> Value {
        let ev = self.next().await.expect("SSE stream ended");
        let v: Value = serde_json::from_str(&ev.data).expect("SSE data is JSON");
        assert_eq!(
            ev.event,
            v["type"].as_str().unwrap(),
            "event name matches the message type"
        );
        assert_eq!(
            ev.id.as_deref(),
            Some(format!("{}:{}", v["epoch"], v["version"]).as_str())
        );
        v
    }
}

/// Guest sign-ins sent from `http` to `base` that come back 200 out of `n`, sign-in `i` with
/// the `X-Forwarded-For` that `hop(i)` names; a 429 counts as refused, anything else fails.
pub async fn guests_allowed(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    hop: impl Fn(usize) -> String,
) -> usize {
    let mut allowed = 0;
    for i in 0..n {
        let r = http
            .post(format!("{base}/v1/auth/guest"))
            .header("x-forwarded-for", hop(i))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => allowed += 1,
            429 => {}
            other => panic!("guest sign-in answered {other}"),
        }
    }
    allowed
}
