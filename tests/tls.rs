//! TLS to every backend: the platform against this machine's PostgreSQL (TLS on, its own
//! certificate), and a Redis and a nats-server this test starts with a throwaway CA, with
//! `--tls-ca-file` trusting them. Without the CA, PostgreSQL is refused naming the store and the
//! cause.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{App, Backend};
use testkit::process::{stdout_of, wait_for_port};

/// The machine's PostgreSQL serves this certificate (Debian's default, `localhost`).
const POSTGRES_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    stdout_of(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a `localhost` server certificate it signed: (ca.pem, server.pem, server.key).
fn throwaway_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Grandstand test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nats_bin() -> String {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("nats-server")
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_runs_on_backends_behind_tls() {
    let backend = Backend::real().await;
    let dir = backend.data_dir().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = throwaway_ca(&dir);
    // One bundle: the throwaway CA for Redis and NATS, PostgreSQL's own certificate.
    let bundle = dir.join("bundle.pem");
    let mut pem = std::fs::read(&ca).unwrap();
    pem.extend(std::fs::read(POSTGRES_CERT).expect("PostgreSQL's certificate"));
    std::fs::write(&bundle, pem).unwrap();

    let redis_port = free_port();
    let _redis = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &redis_port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let nats_port = free_port();
    let _nats = Server(
        Command::new(nats_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(dir.join("js"))
            .arg("--tlscert")
            .arg(&cert)
            .arg("--tlskey")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    wait_for_port(redis_port, "redis-server (TLS)", Duration::from_secs(15)).await;
    wait_for_port(nats_port, "nats-server (TLS)", Duration::from_secs(15)).await;

    let database = backend.database().unwrap().to_string();
    let no_roots = dir.join("no-roots");
    std::fs::create_dir_all(&no_roots).unwrap();
    let tls_env = |ca_file: Option<&Path>| {
        let mut env = vec![
            ("REDIS_URL", format!("rediss://localhost:{redis_port}")),
            ("NATS_URL", format!("tls://localhost:{nats_port}")),
            (
                "DATABASE_URL",
                format!("postgres://postgres@localhost:5432/{database}?sslmode=verify-full"),
            ),
        ];
        // The system's trusted roots only (this machine also points SSL_CERT_DIR at a folder
        // holding PostgreSQL's own certificate, which would make the CA file moot).
        env.push(("SSL_CERT_DIR", no_roots.display().to_string()));
        env.push((
            "SSL_CERT_FILE",
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ));
        if let Some(ca_file) = ca_file {
            env.push(("GRANDSTAND_TLS_CA_FILE", ca_file.display().to_string()));
        }
        env
    };

    // Every role in one process, every backend over verified TLS.
    let app = App::spawn_with(
        &backend,
        &["--matches", "1", "--bots", "4"],
        &tls_env(Some(&bundle)),
        None,
    )
    .await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    for check in ["match_log", "leaderboards", "history", "redis"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    app.live_match_ids(1).await;
    // PostgreSQL says the platform's connections are encrypted.
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let (encrypted,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND s.ssl",
    )
    .bind(&database)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(encrypted > 0, "no TLS connection to {database}");
    app.stop().await;

    // With the CA the command-line tools connect the same way ...
    let out = Command::new(testkit::grandstand_bin())
        .args(["partners", "list"])
        .envs(tls_env(Some(&bundle)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and without it the store is refused at once, naming the backend and why.
    let out = Command::new(testkit::grandstand_bin())
        .args(["partners", "list"])
        .envs(tls_env(None))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "connected without trusting the certificate: {text}"
    );
    assert!(
        text.contains("history store") && text.to_lowercase().contains("certificate"),
        "the error does not say which backend and why: {text}"
    );
    backend.cleanup().await;
}
