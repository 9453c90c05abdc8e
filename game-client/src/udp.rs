//! Drives a `ClientCore` over a real UDP socket, through an optional link conditioner.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::net::DenyReason;
use tokio::net::UdpSocket;

use crate::core::{ClientCore, ClientEvent, Intent, Phase};
use crate::link::{Lane, LinkConditioner};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection refused by the server: {0:?}")]
    Denied(DenyReason),
    #[error("no answer from the server")]
    TimedOut,
}

pub struct UdpClient {
    socket: UdpSocket,
    server: SocketAddr,
    pub core: ClientCore,
    up: Lane,
    down: Lane,
    start: Instant,
    last_heard: Instant,
    buf: Vec<u8>,
    /// Events that arrived while handshaking, handed out by the next `step`.
    backlog: Vec<(Instant, ClientEvent)>,
}

impl UdpClient {
    /// Connects with a connect token, retrying the handshake until `timeout`.
    pub async fn connect(
        server: SocketAddr,
        token: String,
        link: LinkConditioner,
        seed: u64,
        timeout: Duration,
    ) -> Result<UdpClient, ClientError> {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(bind).await?;
        let mut c = UdpClient {
            socket,
            server,
            core: ClientCore::new(token, protocol::net::DEFAULT_INTERPOLATION_DELAY_MS),
            up: Lane::new(link, seed),
            down: Lane::new(link, seed ^ 0x5555_5555),
            start: Instant::now(),
            last_heard: Instant::now(),
            buf: vec![0u8; 2048],
            backlog: Vec::new(),
        };
        c.handshake(timeout).await?;
        Ok(c)
    }

    /// (Re)sends the handshake with the same token until the server answers: after a server
    /// restart or takeover the token is still valid.
    pub async fn handshake(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.core.phase = Phase::Connecting;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let hello = self.core.connect_packet();
            self.send(hello);
            let until = (Instant::now() + Duration::from_millis(250)).min(deadline);
            let events = self.pump_until(until, true).await?;
            let mut outcome = None;
            for (at, e) in events {
                match e {
                    ClientEvent::Connected { .. } => outcome = Some(Ok(())),
                    ClientEvent::Denied(r) => outcome = Some(Err(ClientError::Denied(r))),
                    e => self.backlog.push((at, e)),
                }
            }
            if let Some(o) = outcome {
                return o;
            }
        }
        Err(ClientError::TimedOut)
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Time since the server was last heard from.
    pub fn silence(&self) -> Duration {
        self.last_heard.elapsed()
    }

    pub fn tick_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.core.tick_hz.max(1)))
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.up.push(bytes, Instant::now());
    }

    /// Sends one tick of input, then handles what arrives until the next tick is due.
    pub async fn step(&mut self, intent: Intent) -> Result<Vec<ClientEvent>, ClientError> {
        Ok(self
            .step_timed(intent)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// [`UdpClient::step`], each event with the moment its datagram arrived (came off the
    /// link): what a latency measurement must use, not the end of the step.
    pub async fn step_timed(
        &mut self,
        intent: Intent,
    ) -> Result<Vec<(Instant, ClientEvent)>, ClientError> {
        let until = Instant::now() + self.tick_period();
        let now = self.now_ms();
        let packet = self.core.input_packet(intent, now);
        self.send(packet);
        let mut events = std::mem::take(&mut self.backlog);
        events.extend(self.pump_until(until, false).await?);
        Ok(events)
    }

    /// Sends a chat line (reliable) with the next input.
    pub fn chat(&mut self, text: &str) -> bool {
        self.core.chat(text)
    }

    pub async fn disconnect(&mut self) {
        let bye = self.core.disconnect_packet();
        let _ = self.socket.send_to(&bye, self.server).await;
    }

    /// Handles arrivals until `until` (or, handshaking, until the server answers).
    async fn pump_until(
        &mut self,
        until: Instant,
        handshaking: bool,
    ) -> Result<Vec<(Instant, ClientEvent)>, ClientError> {
        let mut events = Vec::new();
        loop {
            let now = Instant::now();
            while let Some(b) = self.up.pop_due(now) {
                // A full socket buffer loses the datagram, as a real network would.
                let _ = self.socket.try_send_to(&b, self.server);
            }
            while let Some(b) = self.down.pop_due(now) {
                let arrived = Instant::now();
                self.last_heard = arrived;
                let at = self.now_ms();
                // A datagram the client cannot read (say, a delta on a baseline it lacks) is
                // skipped; the next one repairs the state.
                if let Ok(ev) = self.core.on_datagram(&b, at) {
                    events.extend(ev.into_iter().map(|e| (arrived, e)));
                }
            }
            let answered = handshaking
                && events.iter().any(|(_, e)| {
                    matches!(e, ClientEvent::Connected { .. } | ClientEvent::Denied(_))
                });
            if now >= until || answered {
                return Ok(events);
            }
            let wake = [Some(until), self.up.next_due(), self.down.next_due()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until);
            tokio::select! {
                r = self.socket.recv_from(&mut self.buf) => {
                    match r {
                        Ok((n, from)) if from == self.server => {
                            let b = self.buf[..n].to_vec();
                            self.down.push(b, Instant::now());
                        }
                        Ok(_) => {}
                        // ICMP port unreachable while the server is down: keep waiting.
                        Err(_) => {}
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}
