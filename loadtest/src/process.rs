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
