//! A raw SMTP client for the system tests: sends exactly the bytes given, reads whole replies.

use std::time::Duration;

use anyhow::bail;
use testkit::Sandbox;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::smtp_addr;

/// A raw SMTP client: sends exactly the bytes given.
pub struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(sandbox: &Sandbox) -> anyhow::Result<Raw> {
        let stream = TcpStream::connect(smtp_addr(sandbox)).await?;
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = raw.reply().await?;
        assert!(greeting.starts_with("220 "), "{greeting}");
        Ok(raw)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// One whole reply (all its lines), as text.
    pub async fn reply(&mut self) -> anyhow::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await??;
            if n == 0 {
                bail!("connection closed; got so far: {all:?}");
            }
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return Ok(all);
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// EHLO, MAIL and RCPT to ann: ready for DATA.
    pub async fn transaction(&mut self) -> anyhow::Result<()> {
        assert!(self.cmd("EHLO raw.example").await?.starts_with("250"));
        assert!(
            self.cmd("MAIL FROM:<bob@remote.example>")
                .await?
                .starts_with("250")
        );
        assert!(
            self.cmd("RCPT TO:<ann@acme.example>")
                .await?
                .starts_with("250")
        );
        Ok(())
    }

    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
