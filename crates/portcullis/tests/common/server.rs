//! A real `portcullis serve` on three loopback ephemeral ports, killed on
//! drop. For tests that talk to the server over the network.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server; the child is killed and reaped on drop.
pub struct Server {
    child: Child,
    pub smtp: u16,
    pub submission: u16,
    pub submissions: u16,
}

impl Server {
    /// Starts `serve` on the data dir and waits (at most 30 s) until all
    /// three listeners accept connections.
    pub fn start(data_dir: &Path) -> Server {
        let (smtp, submission, submissions) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(data_dir.join("serve.log")).unwrap();
        let child = super::command(data_dir)
            .args(["serve", "--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--submission", &format!("127.0.0.1:{submission}")])
            .args(["--submissions", &format!("127.0.0.1:{submissions}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            smtp,
            submission,
            submissions,
        };
        server.wait_ready(data_dir);
        server
    }

    fn wait_ready(&mut self, data_dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.smtp, self.submission, self.submissions] {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let log =
                        std::fs::read_to_string(data_dir.join("serve.log")).unwrap_or_default();
                    panic!("server exited early ({status}):\n{log}");
                }
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "server did not listen on {port} within 30s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
