//! `testbed nodes up` keeps its nodes in one process; `testbed recycle NODE` and `nodes down`
//! talk to it over a line protocol on a unix socket in the nodes directory.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Recycle(String),
    Down,
}

impl std::str::FromStr for Command {
    type Err = Error;
    fn from_str(s: &str) -> Result<Command> {
        let mut it = s.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some("recycle"), Some(node), None) => Ok(Command::Recycle(node.into())),
            (Some("down"), None, None) => Ok(Command::Down),
            _ => Err(Error::Invalid(format!("unknown control command {s:?}"))),
        }
    }
}

/// Bind the control socket (replacing a stale one).
pub fn listen(dir: &Path) -> Result<UnixListener> {
    let p = socket_path(dir);
    let _ = std::fs::remove_file(&p);
    UnixListener::bind(&p).map_err(Error::io(format!("bind {}", p.display())))
}

/// Accept one command; `reply` is sent back once the caller has acted on it.
pub async fn accept(l: &UnixListener) -> Result<(Command, UnixStream)> {
    loop {
        let (stream, _) = l.accept().await.map_err(Error::io("accept control"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .map_err(Error::io("read control"))?;
        let mut stream = reader.into_inner();
        match line.trim().parse::<Command>() {
            Ok(c) => return Ok((c, stream)),
            Err(e) => {
                let _ = stream.write_all(format!("error {e}\n").as_bytes()).await;
            }
        }
    }
}

pub async fn reply(mut stream: UnixStream, result: &Result<()>) {
    let line = match result {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("error {e}\n"),
    };
    let _ = stream.write_all(line.as_bytes()).await;
}

/// Send a command to a running `nodes up` and wait for its answer.
pub async fn send(dir: &Path, cmd: &str) -> Result<()> {
    let p = socket_path(dir);
    let mut s = UnixStream::connect(&p).await.map_err(Error::io(format!(
        "connect {} (is `testbed nodes up` running?)",
        p.display()
    )))?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .await
        .map_err(Error::io("write control"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .await
        .map_err(Error::io("read control"))?;
    match line.trim() {
        "ok" => Ok(()),
        other => Err(Error::Invalid(
            other.trim_start_matches("error ").to_string(),
        )),
    }
}
