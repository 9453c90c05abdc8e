//! The "physical limit" peer of `loadtest viewers`: the least a fan-out server can do. It
//! follows the same NATS subjects, frames each message as one WebSocket text frame once, and
//! writes those same bytes to every socket of the match. No auth, no state, no resume, no
//! limits: a bounded queue per socket (dropped when full) is its only logic.
//!
//! With `--direct` (the `floor` system) not even that: the loop that reads the feed writes
//! each frame straight to every viewer's socket, one `write` each, and drops a viewer whose
//! socket cannot take the whole frame at once. No queue, no task or timer per viewer: what
//! is left is the kernel's work per write, the least CPU any fan-out server on this machine
//! can spend per delivered message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

type Rooms = Arc<Mutex<HashMap<String, Vec<Viewer>>>>;

/// Where a viewer's frames go: its queue and task, or (direct) its socket.
enum Viewer {
    Queued(mpsc::Sender<Bytes>),
    Direct(std::net::TcpStream),
}

impl Viewer {
    /// Hands over one frame; false once the viewer is gone (or, direct, could not take it).
    fn send(&mut self, frame: &Bytes) -> bool {
        match self {
            Viewer::Queued(tx) => match tx.try_send(frame.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Viewer::Direct(socket) => {
                use std::io::Write;
                matches!(socket.write(frame), Ok(n) if n == frame.len())
            }
        }
    }
}

/// One unmasked text frame (server to client).
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(payload.len() + 10);
    f.put_u8(0x81);
    match payload.len() {
        n if n < 126 => f.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            f.put_u8(126);
            f.put_u16(n as u16);
        }
        n => {
            f.put_u8(127);
            f.put_u64(n as u64);
        }
    }
    f.put_slice(payload);
    f.freeze()
}

async fn handshake(mut socket: TcpStream, rooms: Rooms, direct: bool) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        anyhow::ensure!(n > 0 && head.len() < 8192, "bad handshake");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let id = path
        .split("match=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .context("no match")?
        .to_string();
    let key = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .context("no key")?;
    let accept = derive_accept_key(key.as_bytes());
    socket
        .write_all(
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    if direct {
        // Non-blocking, as tokio left it: a write never waits.
        let socket = socket.into_std()?;
        rooms
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(Viewer::Direct(socket));
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    rooms
        .lock()
        .unwrap()
        .entry(id)
        .or_default()
        .push(Viewer::Queued(tx));
    while let Some(frame) = rx.recv().await {
        if socket.write_all(&frame).await.is_err() {
            break;
        }
    }
    Ok(())
}

pub async fn run(nats_url: String, subject_root: String, direct: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?.port());
    let rooms: Rooms = Arc::default();
    let accepting = rooms.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(handshake(socket, accepting.clone(), direct));
            }
        }
    });
    let nats = async_nats::connect(&nats_url).await?;
    let mut sub = nats.subscribe(format!("{subject_root}.*.*")).await?;
    while let Some(m) = sub.next().await {
        let mut parts = m.subject.as_str().split('.').skip(1);
        let (Some(id), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "keyframe" {
            continue;
        }
        let frame = text_frame(&m.payload);
        let mut rooms = rooms.lock().unwrap();
        if let Some(viewers) = rooms.get_mut(id) {
            viewers.retain_mut(|v| v.send(&frame));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::text_frame;

    #[test]
    fn frames_text_with_the_right_length_encoding() {
        assert_eq!(&text_frame(b"hi")[..], b"\x81\x02hi");
        let f = text_frame(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
    }
}
