//! The whole platform on the embedded default: in-process log, in-memory leaderboards,
//! SQLite history.

mod common;

use common::{scenarios, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_contract() {
    let backend = Backend::embedded();
    scenarios::stream_contract(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_v2() {
    let backend = Backend::embedded();
    scenarios::feed_v2(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_streams() {
    let backend = Backend::embedded();
    scenarios::filtered_streams(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_drain() {
    let backend = Backend::embedded();
    scenarios::readiness_and_drain(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy() {
    let backend = Backend::embedded();
    scenarios::behind_a_proxy(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file() {
    let backend = Backend::embedded();
    scenarios::config_file(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_keys() {
    let backend = Backend::embedded();
    scenarios::partner_keys(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_start() {
    let backend = Backend::embedded();
    scenarios::replay_from_start(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_match_streams() {
    let backend = Backend::embedded();
    scenarios::multi_match_streams(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens() {
    let backend = Backend::embedded();
    scenarios::jwt_tokens(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation() {
    let backend = Backend::embedded();
    scenarios::jwks_url_rotation(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_traces() {
    let backend = Backend::embedded();
    scenarios::otlp_traces(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addr() {
    let backend = Backend::embedded();
    scenarios::internal_addr(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_history() {
    let backend = Backend::embedded();
    scenarios::scores_and_history(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors() {
    let backend = Backend::embedded();
    scenarios::http_errors(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_reports() {
    let backend = Backend::embedded();
    scenarios::render_reports(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchmaking() {
    let backend = Backend::embedded();
    scenarios::matchmaking(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps() {
    let backend = Backend::embedded();
    scenarios::connection_caps(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer() {
    let backend = Backend::embedded();
    common::viewers::slow_viewer(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_half_open_viewers() {
    let backend = Backend::embedded();
    common::viewers::stalled_and_half_open(&backend).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_delay() {
    let backend = Backend::embedded();
    common::viewers::broadcast_delay(&backend).await;
    backend.cleanup().await;
}
