//! A small WebSocket client that speaks exactly what a browser does on the viewer stream,
//! including permessage-deflate, and lets a test send what a browser never would (compressed
//! bombs, broken frames). Built on the protocol crate's pure codecs; used by the end-to-end
//! tests and the load generator's v2 viewers.

use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use protocol::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the client opens the stream.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// `Sec-WebSocket-Extensions`, e.g. `permessage-deflate; client_max_window_bits`.
    pub extensions: Option<String>,
    /// `Sec-WebSocket-Protocol`, e.g. `grandstand.v2`.
    pub protocol: Option<String>,
    /// `Authorization: Bearer` token.
    pub token: Option<String>,
}

/// What a browser offers: permessage-deflate with its default parameters.
pub const BROWSER_DEFLATE: &str = "permessage-deflate; client_max_window_bits";

/// The server's answer to an upgrade it refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    /// The close frame's code and reason (`None`: no code given).
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    Ended,
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server accepted permessage-deflate.
    pub deflate: bool,
    /// The `Sec-WebSocket-Protocol` the server chose.
    pub protocol: Option<String>,
    /// Bytes of frames received (headers included): what the viewer's network carried.
    pub wire_bytes: u64,
}

impl RawWs {
    /// Opens `path` on `base` (`http://host:port`) as a WebSocket.
    pub async fn connect(
        base: &str,
        path: &str,
        offer: &Offer,
    ) -> anyhow::Result<Result<RawWs, Refused>> {
        let host = base.trim_start_matches("http://").trim_end_matches('/');
        let stream = TcpStream::connect(host).await.context("connecting")?;
        RawWs::handshake(stream, host, path, offer).await
    }

    /// The opening handshake over an already connected socket.
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        offer: &Offer,
    ) -> anyhow::Result<Result<RawWs, Refused>> {
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        );
        if let Some(e) = &offer.extensions {
            req.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        if let Some(p) = &offer.protocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        if let Some(t) = &offer.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a status line")?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if status != 101 {
            // Read the (short) JSON body of the refusal.
            let len: usize = header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = buf[head_end..].to_vec();
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Ok(Err(Refused {
                status,
                body: String::from_utf8_lossy(&body).to_string(),
            }));
        }
        let expected = ws::accept_key(&key);
        if header("sec-websocket-accept").as_deref() != Some(expected.as_str()) {
            bail!("wrong Sec-WebSocket-Accept in {head}");
        }
        let deflate =
            header("sec-websocket-extensions").is_some_and(|e| e.starts_with("permessage-deflate"));
        Ok(Ok(RawWs {
            stream,
            buf: buf[head_end..].to_vec(),
            deflate,
            protocol: header("sec-websocket-protocol"),
            wire_bytes: 0,
        }))
    }

    /// The socket and the bytes read past the handshake, for a caller that reads frames itself.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// The next message (pings are answered, pongs skipped), or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<Received>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((op, compressed, payload, used)) = ws::read_server_frame(&self.buf) {
                let payload = payload.to_vec();
                self.buf.drain(..used);
                self.wire_bytes += used as u64;
                match op {
                    ws::OP_TEXT => {
                        let text = if compressed {
                            ws::inflate_message(&payload, 16 << 20)
                                .map_err(|e| anyhow::anyhow!("inflating: {e}"))?
                        } else {
                            payload
                        };
                        return Ok(Some(Received::Text(String::from_utf8(text)?)));
                    }
                    ws::OP_CLOSE => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        let reason =
                            String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).to_string();
                        return Ok(Some(Received::Close(code, reason)));
                    }
                    ws::OP_PING => {
                        self.send(ws::OP_PONG, &payload, false).await?;
                    }
                    _ => {}
                }
                continue;
            }
            let mut chunk = [0u8; 16384];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            if n == 0 {
                return Ok(Some(Received::Ended));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text message as JSON, skipping nothing; fails on a close or time-out.
    pub async fn json(&mut self, limit: Duration) -> anyhow::Result<serde_json::Value> {
        match self.next(limit).await? {
            Some(Received::Text(t)) => Ok(serde_json::from_str(&t)?),
            other => bail!("expected a message, got {other:?}"),
        }
    }

    /// Sends one masked frame.
    pub async fn send(
        &mut self,
        opcode: u8,
        payload: &[u8],
        compressed: bool,
    ) -> anyhow::Result<()> {
        let frame = ws::client_frame(opcode, payload, true, compressed, rand::random());
        self.send_raw(&frame).await
    }

    /// Sends bytes as they are (for frames a browser would never send).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Waits for the server's close frame, skipping messages; its code.
    pub async fn closed_with(&mut self, limit: Duration) -> anyhow::Result<Option<u16>> {
        loop {
            match self.next(limit).await? {
                Some(Received::Text(_)) => continue,
                Some(Received::Close(code, _)) => return Ok(code),
                Some(Received::Ended) | None => return Ok(None),
            }
        }
    }
}
