//! Processes and sockets the scenarios share: servers started on port 0 and read back from
//! their logs (the test kit's rule, one for the workspace), and client sockets from a chosen
//! source address.

use tokio::net::{TcpSocket, TcpStream};

pub use testkit::process::{free_port, log_file, spawn_logged, wait_listening, Service};

fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A connection to `gateway` (`http://host:port` or `host:port`) from the address `source`.
pub async fn open_socket(source: &str, gateway: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // The port is picked at connect time, per destination: binding to port 0 makes the kernel
    // search for a port free for every destination, which turns slow and serial once thousands
    // of closed connections sit in TIME_WAIT (a reconnect storm measured the load generator,
    // not the gateway, without this).
    bind_address_no_port(&socket)?;
    socket.bind(format!("{source}:0").parse()?)?;
    let addr = gateway.trim_start_matches("http://").parse()?;
    Ok(socket.connect(addr).await?)
}

/// `grandstand` (every role) on its embedded backends, keeping its files in `data`: the
/// backend URLs of the harness's own environment are not passed on.
pub fn embedded_grandstand(data: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(testkit::grandstand_bin());
    cmd.arg("--data-dir")
        .arg(data)
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    cmd
}

/// The ids of `n` live matches of the server at `base`, once it has that many.
pub async fn live_match_ids(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    loop {
        let list: serde_json::Value = http
            .get(format!("{base}/v1/matches"))
            .send()
            .await?
            .json()
            .await?;
        let ids: Vec<String> = list["matches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["status"] == "live")
            .filter_map(|m| m["id"].as_str().map(String::from))
            .collect();
        if ids.len() >= n.max(1) {
            return Ok(ids);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
