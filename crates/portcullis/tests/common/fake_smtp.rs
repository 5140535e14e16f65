//! A scripted SMTP server for replies a real Portcullis never gives: a
//! tokio listener on 127.0.0.1:0 that answers each command line with the
//! reply of the first rule whose prefix matches. Bounded: at most
//! `MAX_CONNECTIONS` connections, each closed after `IDLE` of silence; the
//! runtime stops on drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const MAX_CONNECTIONS: usize = 16;
const IDLE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Script {
    /// `None`: accept and stay silent (no greeting).
    pub greeting: Option<String>,
    /// (upper-case command prefix, reply with CRLF line ends). A reply
    /// containing `{line}` echoes the command line received.
    pub rules: Vec<(String, String)>,
    /// Written in answer to the first bytes received, then the connection
    /// is closed (e.g. a TLS alert record).
    pub raw_answer: Option<Vec<u8>>,
}

impl Script {
    pub fn new(greeting: Option<&str>) -> Script {
        Script {
            greeting: greeting.map(|g| format!("{g}\r\n")),
            rules: Vec::new(),
            raw_answer: None,
        }
    }

    /// A peer that answers whatever it receives first with `bytes`.
    pub fn raw(bytes: &[u8]) -> Script {
        Script {
            greeting: None,
            rules: Vec::new(),
            raw_answer: Some(bytes.to_vec()),
        }
    }

    pub fn on(mut self, prefix: &str, reply: &str) -> Script {
        let reply = reply.replace('\n', "\r\n");
        self.rules
            .push((prefix.to_ascii_uppercase(), format!("{reply}\r\n")));
        self
    }
}

pub struct FakeSmtp {
    runtime: Option<Runtime>,
    pub port: u16,
    /// Every command line received, in order.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl FakeSmtp {
    pub fn start(script: Script) -> FakeSmtp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        runtime.spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, script.clone(), seen.clone()));
            }
        });
        FakeSmtp {
            runtime: Some(runtime),
            port,
            lines,
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, script: Script, seen: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = stream.into_split();
    if let Some(answer) = &script.raw_answer {
        let mut buf = [0u8; 1024];
        let mut read = read;
        if let Ok(Ok(n)) = tokio::time::timeout(IDLE, read.read(&mut buf)).await
            && n > 0
        {
            let _ = write.write_all(answer).await;
        }
        return;
    }
    let mut read = BufReader::new(read);
    if let Some(greeting) = &script.greeting
        && write.write_all(greeting.as_bytes()).await.is_err()
    {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut read).take(4096);
        match tokio::time::timeout(IDLE, limited.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let command = line.trim_end().to_owned();
        seen.lock().unwrap().push(command.clone());
        let upper = command.to_ascii_uppercase();
        let reply = script
            .rules
            .iter()
            .find(|(prefix, _)| upper.starts_with(prefix.as_str()))
            .map(|(_, reply)| reply.replace("{line}", &command))
            .unwrap_or_else(|| {
                if upper.starts_with("QUIT") {
                    "221 2.0.0 Bye\r\n".to_owned()
                } else {
                    "250 2.0.0 Ok\r\n".to_owned()
                }
            });
        if write.write_all(reply.as_bytes()).await.is_err() || upper.starts_with("QUIT") {
            return;
        }
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
