//! The whole platform on the real NATS JetStream, Redis and PostgreSQL of this machine,
//! each test under its own stream, key prefix and database.

mod common;

use common::{scenarios, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_contract() {
    let backend = Backend::real().await;
    scenarios::stream_contract(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_keys() {
    let backend = Backend::real().await;
    scenarios::partner_keys(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_start() {
    let backend = Backend::real().await;
    scenarios::replay_from_start(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_match_streams() {
    let backend = Backend::real().await;
    scenarios::multi_match_streams(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_history() {
    let backend = Backend::real().await;
    scenarios::scores_and_history(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors() {
    let backend = Backend::real().await;
    scenarios::http_errors(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_outage() {
    let backend = Backend::real().await;
    scenarios::history_outage(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_redis_loss() {
    let backend = Backend::real().await;
    scenarios::rebuild_after_redis_loss(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchmaking() {
    let backend = Backend::real().await;
    scenarios::matchmaking(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery() {
    let backend = Backend::real().await;
    scenarios::crash_recovery(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_failover() {
    let backend = Backend::real().await;
    scenarios::gateway_failover(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_status() {
    let backend = Backend::real().await;
    scenarios::producer_status(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_drain() {
    let backend = Backend::real().await;
    scenarios::readiness_and_drain(&backend).await;
    backend.cleanup().await;
}
