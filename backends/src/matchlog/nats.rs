//! The match log on NATS JetStream: one stream (`MATCHES` by default) holding
//! `<root>.<match>.delta|event|keyframe`, with `Match-Epoch`, `Match-Version` and
//! `Nats-Msg-Id = <match>:<epoch>:<version>` headers for dedupe.
//!
//! Limits are explicit: `max_age` and `max_bytes` bound the stream (oldest messages are
//! discarded first); the duplicate window bounds how long a re-publish is recognised.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use protocol::log::parse_subject;
use protocol::{LogKind, LogRecord};

use super::{
    AckHandle, DeliveredEvent, EventConsumer, LogError, LogItem, LogStream, MatchLog, TickBus,
};

const EPOCH_HEADER: &str = "Match-Epoch";
const VERSION_HEADER: &str = "Match-Version";
/// On the live line: when the publisher sent the record (microseconds since the Unix epoch),
/// so a follower's stamps start where the stored log's do (its publish time), not at the
/// follower's receipt, which would leave the publisher -> NATS -> gateway leg out of every
/// latency the gateway reports.
const PUBLISHED_HEADER: &str = "Match-Published-Us";

#[derive(Debug, Clone)]
pub struct NatsLogConfig {
    /// One server, or a cluster's servers separated by commas.
    pub url: String,
    /// Stream name, `MATCHES` in production; tests use a unique one.
    pub stream: String,
    /// First subject token, `match` in production; tests use a unique one because two streams
    /// cannot hold overlapping subjects.
    pub subject_root: String,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
    /// How often the client pings its server: a server that vanished (a host gone, not a
    /// process killed) is noticed after two unanswered pings. The client's default is 60 s.
    pub ping_interval: Duration,
    /// How long a request (a JetStream API call: consumer creation, a keyframe lookup, a
    /// publish's ack) may wait before it fails and is retried.
    pub request_timeout: Duration,
}

impl NatsLogConfig {
    pub fn new(url: impl Into<String>) -> NatsLogConfig {
        NatsLogConfig {
            url: url.into(),
            stream: "MATCHES".into(),
            subject_root: "match".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 8 << 30,
            replicas: 1,
            ping_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// How long one pull request of a follower waits (see `follow`).
const FOLLOW_PULL_EXPIRY: Duration = Duration::from_secs(2);

pub struct NatsLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    config: NatsLogConfig,
}

impl NatsLog {
    /// Deletes the stream and everything in it (benchmarks and tests clean up with this).
    pub async fn delete_stream(&self) -> Result<(), LogError> {
        self.js
            .delete_stream(&self.config.stream)
            .await
            .map(|_| ())
            .map_err(LogError::unavailable)
    }

    /// Connects and creates the stream, or updates its limits to the configured ones.
    pub async fn connect(config: NatsLogConfig) -> Result<NatsLog, LogError> {
        // A cluster is given as a comma-separated list; any reachable node will do, and the
        // client learns the rest from it.
        let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
        let mut options = async_nats::ConnectOptions::new()
            .name("grandstand")
            .ping_interval(config.ping_interval)
            .request_timeout(Some(config.request_timeout))
            .connection_timeout(config.request_timeout.max(Duration::from_secs(1)))
            .retry_on_initial_connect();
        if servers.iter().any(|s| s.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        if let Some((ca, _)) = crate::tls::private_ca() {
            options = options.add_root_certificates(ca.clone());
        }
        let client = options
            .connect(servers)
            .await
            .map_err(LogError::unavailable)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let root = &config.subject_root;
        let stream_config = stream::Config {
            name: config.stream.clone(),
            // `<root>.>` rather than the three kinds: a consumer filter must be a subset of one
            // stream subject, and `<root>.<match>.*` (one match, every kind) is the filter
            // followers need; nats-server 2.9 has no multi-subject filters.
            subjects: vec![format!("{root}.>")],
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        };
        // JetStream may be briefly busy or electing a leader: retry for about 20 s.
        let mut attempt = 0;
        loop {
            match js.create_or_update_stream(stream_config.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 8 => {
                    attempt += 1;
                    tracing::warn!(error = ?e, attempt, "creating the match log stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250 * (1 << attempt.min(4)))).await;
                }
                Err(e) => {
                    return Err(LogError::Unavailable(format!(
                        "creating stream: {e} ({e:?})"
                    )))
                }
            }
        }
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(LogError::unavailable)?;
        Ok(NatsLog {
            client,
            js,
            stream,
            config,
        })
    }
}

impl NatsLog {
    /// An ordered consumer of one match's records from `deliver`, then live.
    async fn follow_from(
        &self,
        match_id: &str,
        deliver: consumer::DeliverPolicy,
    ) -> Result<LogStream, LogError> {
        let root = &self.config.subject_root;
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{root}.{match_id}.*"),
                deliver_policy: deliver,
                // Pull requests of 2 s make the client's idle heartbeat 1 s, so a consumer lost
                // with a NATS node is noticed and recreated within seconds; the 30 s default
                // (15 s heartbeat) left viewers of a live match on silence for 17 s after a node
                // was killed.
                max_expires: FOLLOW_PULL_EXPIRY,
                ..Default::default()
            })
            .await
            .map_err(LogError::unavailable)?;
        let messages = consumer.messages().await.map_err(LogError::unavailable)?;
        let root = root.clone();
        let wanted = match_id.to_string();
        let stream = messages.filter_map(move |m| {
            let root = root.clone();
            let wanted = wanted.clone();
            async move {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => return Some(Err(LogError::unavailable(e))),
                };
                let info = m.info().ok()?;
                let caught_up = info.pending == 0;
                let published_us = (info.published.unix_timestamp_nanos() / 1_000) as u64;
                let record = record_of(
                    &root,
                    m.subject.as_str(),
                    m.headers.as_ref(),
                    m.payload.clone(),
                )?;
                if record.match_id != wanted {
                    return None;
                }
                Some(Ok(LogItem {
                    record,
                    caught_up,
                    published_us: Some(published_us),
                }))
            }
        });
        Ok(Box::pin(stream))
    }
}

/// The log record a message carries: match and kind from its subject under `root`, epoch and
/// version from its headers; `None` for a message that is not a match log record.
fn record_of(
    root: &str,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Option<LogRecord> {
    let (match_id, kind) = parse_subject(root, subject)?;
    let header = |name: &str| -> Option<u64> { headers?.get(name)?.as_str().parse().ok() };
    Some(LogRecord {
        match_id: match_id.to_string(),
        epoch: header(EPOCH_HEADER)?,
        version: header(VERSION_HEADER)?,
        kind,
        body: payload,
    })
}

fn keyframe_error(e: stream::LastRawMessageError) -> LogError {
    match e.kind() {
        stream::LastRawMessageErrorKind::NoMessageFound => LogError::UnknownMatch,
        _ => LogError::unavailable(e),
    }
}

#[async_trait]
impl MatchLog for NatsLog {
    async fn ready(&self) -> Result<(), LogError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(LogError::Unavailable(format!(
                "NATS: {}",
                self.client.connection_state()
            )));
        }
        // The stream's leader answers (a node that lost its cluster does not).
        let mut stream = self.stream.clone();
        tokio::time::timeout(std::time::Duration::from_secs(2), stream.info())
            .await
            .map_err(|_| LogError::Unavailable("JetStream: no answer in 2 s".into()))?
            .map(|_| ())
            .map_err(LogError::unavailable)
    }

    async fn publish(&self, record: LogRecord) -> Result<(), LogError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(EPOCH_HEADER, record.epoch.to_string().as_str());
        headers.insert(VERSION_HEADER, record.version.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            record.msg_id().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                record.subject(&self.config.subject_root),
                headers,
                record.body,
            )
            .await
            .map_err(LogError::unavailable)?;
        ack.await.map_err(LogError::unavailable)?;
        Ok(())
    }

    fn has_live_line(&self) -> bool {
        true
    }

    async fn publish_live(&self, record: &LogRecord) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(EPOCH_HEADER, record.epoch.to_string().as_str());
        headers.insert(VERSION_HEADER, record.version.to_string().as_str());
        headers.insert(PUBLISHED_HEADER, protocol::now_us().to_string().as_str());
        let subject = record.subject(&super::live_root(&self.config.subject_root));
        // Fire-and-forget: while the client reconnects its send buffer may be full, and the
        // live line is worth nothing late (the stored log carries the record anyway).
        let sent = self
            .client
            .publish_with_headers(subject, headers, record.body.clone());
        let _ = tokio::time::timeout(Duration::from_millis(20), sent).await;
    }

    async fn live(&self, match_id: &str) -> Result<Option<LogStream>, LogError> {
        if !protocol::valid_match_id(match_id) {
            return Err(LogError::UnknownMatch);
        }
        let root = super::live_root(&self.config.subject_root);
        let subscription = self
            .client
            .subscribe(format!("{root}.{match_id}.*"))
            .await
            .map_err(LogError::unavailable)?;
        let wanted = match_id.to_string();
        let records = subscription.filter_map(move |m| {
            let published_us = m
                .headers
                .as_ref()
                .and_then(|h| h.get(PUBLISHED_HEADER)?.as_str().parse::<u64>().ok())
                // A stamp from a clock ahead of ours would make a negative latency.
                .map_or_else(protocol::now_us, |at| at.min(protocol::now_us()));
            let record = record_of(&root, m.subject.as_str(), m.headers.as_ref(), m.payload)
                .filter(|r| r.match_id == wanted);
            std::future::ready(record.map(|record| {
                Ok(LogItem {
                    record,
                    caught_up: true,
                    published_us: Some(published_us),
                })
            }))
        });
        Ok(Some(Box::pin(records)))
    }

    async fn follow(&self, match_id: &str) -> Result<LogStream, LogError> {
        if !protocol::valid_match_id(match_id) {
            return Err(LogError::UnknownMatch);
        }
        let root = &self.config.subject_root;
        let keyframe = self
            .stream
            .get_last_raw_message_by_subject(&format!("{root}.{match_id}.keyframe"))
            .await
            .map_err(keyframe_error)?;
        self.follow_from(
            match_id,
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: keyframe.sequence,
            },
        )
        .await
    }

    async fn replay(&self, match_id: &str) -> Result<LogStream, LogError> {
        if !protocol::valid_match_id(match_id) {
            return Err(LogError::UnknownMatch);
        }
        // The match must have a keyframe; its records before the first retained one (the
        // stream's age or size limit took the keyframe that started them) are skipped, as no
        // state can be built from them.
        self.latest_keyframe(match_id).await?;
        let records = self
            .follow_from(match_id, consumer::DeliverPolicy::All)
            .await?;
        let mut started = false;
        Ok(Box::pin(records.filter(move |item| {
            started = started
                || item
                    .as_ref()
                    .map_or(true, |i| i.record.kind == LogKind::Keyframe);
            std::future::ready(started)
        })))
    }

    async fn match_events(&self, match_id: &str) -> Result<Vec<LogRecord>, LogError> {
        if !protocol::valid_match_id(match_id) {
            return Ok(Vec::new());
        }
        let root = &self.config.subject_root;
        let subject = format!("{root}.{match_id}.event");
        let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) => {
                return match keyframe_error(e) {
                    LogError::UnknownMatch => Ok(Vec::new()),
                    other => Err(other),
                }
            }
        };
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(LogError::unavailable)?;
        let mut messages = consumer.messages().await.map_err(LogError::unavailable)?;
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m.map_err(LogError::unavailable)?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
            if let Some(r) = record_of(
                root,
                m.subject.as_str(),
                m.headers.as_ref(),
                m.payload.clone(),
            ) {
                out.push(r);
            }
            if seq >= last {
                break;
            }
        }
        Ok(out)
    }

    async fn latest_keyframe(&self, match_id: &str) -> Result<LogRecord, LogError> {
        if !protocol::valid_match_id(match_id) {
            return Err(LogError::UnknownMatch);
        }
        let m = self
            .stream
            .get_last_raw_message_by_subject(&format!(
                "{}.{match_id}.keyframe",
                self.config.subject_root
            ))
            .await
            .map_err(keyframe_error)?;
        record_of(
            &self.config.subject_root,
            m.subject.as_str(),
            Some(&m.headers),
            m.payload,
        )
        .ok_or_else(|| LogError::Unavailable("keyframe without match headers".into()))
    }

    async fn match_ids(&self) -> Result<Vec<String>, LogError> {
        let mut subjects = self
            .stream
            .info_with_subjects(format!("{}.*.keyframe", self.config.subject_root))
            .await
            .map_err(LogError::unavailable)?;
        let mut ids = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(LogError::unavailable)?;
            if let Some((id, LogKind::Keyframe)) =
                parse_subject(&self.config.subject_root, &subject)
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    async fn all_events(&self) -> Result<LogStream, LogError> {
        let root = self.config.subject_root.clone();
        let mut consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{root}.*.event"),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(LogError::unavailable)?;
        let pending = consumer
            .info()
            .await
            .map_err(LogError::unavailable)?
            .num_pending;
        if pending == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let messages = consumer.messages().await.map_err(LogError::unavailable)?;
        let stream = messages
            .map(move |m| {
                let m = m.map_err(LogError::unavailable)?;
                let info = m.info().map_err(LogError::unavailable)?;
                let caught_up = info.pending == 0;
                let record = record_of(
                    &root,
                    m.subject.as_str(),
                    m.headers.as_ref(),
                    m.payload.clone(),
                )
                .ok_or_else(|| {
                    LogError::Unavailable(format!("{} is not a match log record", m.subject))
                })?;
                Ok(LogItem {
                    record,
                    caught_up,
                    published_us: None,
                })
            })
            .boxed();
        // Stop right after the item that caught up: this is a bounded replay, not a follow.
        // (Ending on the next poll instead, as `scan` would, waits for one more event to be
        // published: forever on a quiet log, e.g. a rebuild while no match is running.)
        let bounded = futures::stream::unfold(Some(stream), |inner| async move {
            let mut inner = inner?;
            let item: Result<LogItem, LogError> = inner.next().await?;
            let done = item.as_ref().map(|i| i.caught_up).unwrap_or(true);
            Some((item, (!done).then_some(inner)))
        });
        Ok(Box::pin(bounded))
    }

    async fn event_consumer(&self, name: &str) -> Result<Box<dyn EventConsumer>, LogError> {
        let consumer: consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject: format!("{}.*.event", self.config.subject_root),
                    ack_policy: consumer::AckPolicy::Explicit,
                    // Also how long events prefetched by a consumer that went away wait before
                    // another gets them.
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(LogError::unavailable)?;
        Ok(Box::new(NatsConsumer {
            consumer,
            root: self.config.subject_root.clone(),
            messages: None,
        }))
    }
}

#[async_trait]
impl TickBus for NatsLog {
    async fn publish_tick(&self, board: &str, tick: Bytes) -> Result<(), LogError> {
        let subject = super::tick_subject(&self.config.subject_root, board);
        self.client
            .publish(subject, tick)
            .await
            .map_err(LogError::unavailable)
    }

    async fn ticks(&self, board: &str) -> Result<super::TickStream, LogError> {
        let subject = super::tick_subject(&self.config.subject_root, board);
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(LogError::unavailable)?;
        Ok(Box::pin(sub.map(|m| m.payload)))
    }
}

struct NatsConsumer {
    consumer: consumer::PullConsumer,
    root: String,
    messages: Option<consumer::pull::Stream>,
}

#[async_trait]
impl EventConsumer for NatsConsumer {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<DeliveredEvent>, LogError> {
        // One long-lived pull stream (the client keeps pulls in flight), batched here: wait up
        // to `wait` for the first event, then take whatever has already arrived. A per-batch
        // fetch would wait out its expiry on every call.
        if self.messages.is_none() {
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(max.clamp(1, 10_000))
                // Short pulls with a 1 s heartbeat: after a NATS node dies (and the consumer's
                // leader with it) a pull sent to it is noticed lost within seconds, not at the
                // 30 s default expiry.
                .expires(Duration::from_secs(2))
                .heartbeat(Duration::from_secs(1))
                .messages()
                .await
                .map_err(LogError::unavailable)?;
            self.messages = Some(stream);
        }
        let stream = self.messages.as_mut().expect("just set");
        let mut fetched = Vec::new();
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => {
                self.messages = None;
                return Err(LogError::Unavailable("event stream ended".into()));
            }
            Ok(Some(Err(e))) => {
                self.messages = None;
                return Err(LogError::unavailable(e));
            }
            Ok(Some(Ok(m))) => fetched.push(m),
        }
        while fetched.len() < max {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => fetched.push(m),
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "event stream error; reconnecting");
                    self.messages = None;
                    break;
                }
                Some(None) => {
                    self.messages = None;
                    break;
                }
                None => break,
            }
        }
        let mut out = Vec::new();
        for m in fetched {
            let delivered = m.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
            let parsed = record_of(
                &self.root,
                m.subject.as_str(),
                m.headers.as_ref(),
                m.payload.clone(),
            );
            match parsed {
                Some(record) => out.push(DeliveredEvent {
                    record,
                    delivered,
                    handle: AckHandle::Nats(Box::new(m)),
                }),
                None => {
                    // Not ours to interpret: terminate it so it is not redelivered forever.
                    tracing::error!(subject = %m.subject, "event without match headers; terminated");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
        Ok(out)
    }

    async fn backlog(&mut self) -> Option<u64> {
        let info = self.consumer.info().await.ok()?;
        Some(info.num_pending + info.num_ack_pending as u64)
    }

    async fn ack(&mut self, event: &DeliveredEvent) -> Result<(), LogError> {
        if let AckHandle::Nats(m) = &event.handle {
            m.double_ack().await.map_err(LogError::unavailable)?;
        }
        Ok(())
    }

    async fn retry_later(
        &mut self,
        event: &DeliveredEvent,
        delay: Duration,
    ) -> Result<(), LogError> {
        if let AckHandle::Nats(m) = &event.handle {
            m.ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(LogError::unavailable)?;
        }
        Ok(())
    }
}
