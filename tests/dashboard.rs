//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core)
//! against the real binary on the embedded backends. The browser side is
//! `web-dashboard/browser/run.mjs`; it leaves screenshots and measurements in
//! `web-dashboard/test-artifacts/`.

mod common;

use std::process::Command;

use common::{App, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web-dashboard");
    assert!(
        dashboard.join("node_modules/playwright-core").exists(),
        "run `npm ci` in web-dashboard first (scripts/test does)"
    );
    let backend = Backend::embedded();
    // A port for a broadcaster's overlay page of another origin, allowed to read cross-origin.
    let overlay_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let overlay = format!("http://127.0.0.1:{overlay_port}");
    // Publish stamps let the page measure publish -> pixel.
    let app = App::spawn(
        &backend,
        &[
            "--matches",
            "2",
            "--bots",
            "8",
            "--stamp-publish-time",
            "--cors-origins",
            &overlay,
        ],
    )
    .await;
    app.live_matches(2).await;
    let base = app.base.clone();
    let dir = dashboard.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("browser/run.mjs")
            .current_dir(&dir)
            .env("BASE", base)
            .env("OVERLAY_PORT", overlay_port.to_string())
            .env("ARTIFACTS", dir.join("test-artifacts"))
            .env(
                "MEASURE_MS",
                std::env::var("DASHBOARD_MEASURE_MS").unwrap_or_else(|_| "8000".into()),
            )
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        app.log()
    );
    drop(app);
    backend.cleanup().await;
}
