//! BIRD's control socket (the protocol `birdc` speaks), client side.
//!
//! BIRD greets each connection with `0001 BIRD x.y.z ready.`; each command
//! is one line, and its reply is a run of lines: `NNNN-text` continues the
//! reply with code `NNNN`, ` text` (a leading space) continues it with the
//! code of the line before, and `NNNN text` ends it. Codes are four digits:
//! `0xxx` an action done, `1xxx` a table entry, `2xxx` a table heading,
//! `8xxx` a runtime error, `9xxx` a parse error. Lines starting with `+`
//! are asynchronous messages, not part of any reply.
//!
//! [`ReplyParser`] is sans-IO (bytes in, replies out) and refuses whatever
//! does not have that shape with a clear error; [`Bird`] is the thin tokio
//! glue: one connection per command, every step under a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest reply accepted (a route listing of one prefix is a few
/// hundred bytes; a full table would be refused, not buffered).
pub const MAX_REPLY: usize = 1 << 20;

/// What went wrong talking to BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The socket could not be reached, read or written.
    #[error("BIRD control socket {}: {what}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// BIRD did not answer within the deadline.
    #[error("BIRD control socket {}: no answer within {timeout:?} ({what})", path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What was awaited.
        what: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// What came back is not BIRD's protocol.
    #[error("not a BIRD control-socket reply: {0}")]
    Protocol(String),
    /// BIRD answered with an error code (8xxx runtime, 9xxx parse error).
    #[error("BIRD refused `{command}`: {code:04} {text}")]
    Refused {
        /// The command sent.
        command: String,
        /// The reply's code.
        code: u16,
        /// The reply's text.
        text: String,
    },
    /// BIRD answered with a code this client does not expect for the command.
    #[error("BIRD answered `{command}` with {code:04} {text}, which was not expected")]
    Unexpected {
        /// The command sent.
        command: String,
        /// The reply's code.
        code: u16,
        /// The reply's text.
        text: String,
    },
    /// A command that is not one line of printable text (never sent).
    #[error("not a BIRD command: {0:?}")]
    BadCommand(String),
}

/// One line of a reply: its code (continuation lines without one carry
/// the code of the line before) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The four-digit code.
    pub code: u16,
    /// The text after the code and its separator.
    pub text: String,
}

/// A whole reply: every line, the last one ending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The lines in order; never empty.
    pub lines: Vec<Line>,
}

impl Reply {
    /// The code of the final line.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    /// The text of the final line, or of the first line if the final one
    /// is empty (`0000 ` after a listing).
    pub fn summary(&self) -> &str {
        let last = self.lines.last().map_or("", |l| l.text.trim());
        if last.is_empty() {
            self.lines.first().map_or("", |l| l.text.trim())
        } else {
            last
        }
    }

    /// Whether BIRD reports an error (8xxx or 9xxx).
    pub fn is_error(&self) -> bool {
        self.code() >= 8000
    }
}

/// Splits BIRD's byte stream into replies (sans-IO).
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<Line>,
    /// Bytes of the reply being read, for [`MAX_REPLY`].
    size: usize,
}

impl ReplyParser {
    /// A parser at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes more bytes; returns the reply they complete, if any. Bytes
    /// after a complete reply stay buffered for the next call (BIRD sends
    /// nothing unasked, so there should be none).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Reply>, BirdError> {
        self.buf.extend_from_slice(bytes);
        self.next_reply()
    }

    /// The next complete reply already buffered, if any.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, BirdError> {
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            self.size = self.size.saturating_add(raw.len());
            if self.size > MAX_REPLY {
                return Err(BirdError::Protocol(format!(
                    "reply longer than {MAX_REPLY} bytes"
                )));
            }
            let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let text = text.strip_suffix('\r').unwrap_or(&text);
            match parse_line(text, self.lines.last().map(|l| l.code))? {
                Parsed::Async => {}
                Parsed::More(line) => self.lines.push(line),
                Parsed::Last(line) => {
                    self.lines.push(line);
                    self.size = 0;
                    return Ok(Some(Reply {
                        lines: std::mem::take(&mut self.lines),
                    }));
                }
            }
        }
        if self.buf.len() > MAX_REPLY {
            return Err(BirdError::Protocol(format!(
                "a line longer than {MAX_REPLY} bytes"
            )));
        }
        Ok(None)
    }
}

enum Parsed {
    /// An asynchronous message (`+...`): not part of the reply.
    Async,
    /// A line that continues the reply.
    More(Line),
    /// The reply's last line.
    Last(Line),
}

fn parse_line(text: &str, previous: Option<u16>) -> Result<Parsed, BirdError> {
    let shown = || text.chars().take(80).collect::<String>();
    if text.starts_with('+') {
        return Ok(Parsed::Async);
    }
    if let Some(rest) = text.strip_prefix(' ') {
        let Some(code) = previous else {
            return Err(BirdError::Protocol(format!(
                "a continuation line without a code before it: {:?}",
                shown()
            )));
        };
        return Ok(Parsed::More(Line {
            code,
            text: rest.to_owned(),
        }));
    }
    let digits = text
        .get(..4)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
    let (Some(digits), Some(rest)) = (digits, text.get(4..)) else {
        return Err(BirdError::Protocol(format!(
            "a line without a four-digit code: {:?}",
            shown()
        )));
    };
    let code: u16 = digits
        .parse()
        .map_err(|_| BirdError::Protocol(format!("bad code in {:?}", shown())))?;
    match rest.as_bytes().first() {
        Some(b'-') => Ok(Parsed::More(Line {
            code,
            text: rest[1..].to_owned(),
        })),
        Some(b' ') => Ok(Parsed::Last(Line {
            code,
            text: rest[1..].to_owned(),
        })),
        None => Ok(Parsed::Last(Line {
            code,
            text: String::new(),
        })),
        Some(_) => Err(BirdError::Protocol(format!(
            "a code followed by neither '-' nor ' ': {:?}",
            shown()
        ))),
    }
}

/// BIRD's control socket at `path`: one connection per command.
#[derive(Debug, Clone)]
pub struct Bird {
    path: PathBuf,
    timeout: Duration,
}

/// The greeting's code.
const WELCOME: u16 = 1;

impl Bird {
    /// A client of the socket at `path`; connecting, the greeting, and the
    /// reply each get `timeout`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Bird {
        Bird {
            path: path.into(),
            timeout,
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `command` and returns BIRD's reply, whatever its code.
    pub async fn command(&self, command: &str) -> Result<Reply, BirdError> {
        if command.is_empty() || command.len() > 1024 || command.chars().any(|c| c.is_control()) {
            return Err(BirdError::BadCommand(command.to_owned()));
        }
        let io = |what: &'static str| {
            let path = self.path.clone();
            move |source| BirdError::Io { path, what, source }
        };
        let mut stream = self
            .timed("connecting", tokio::net::UnixStream::connect(&self.path))
            .await?
            .map_err(io("connect"))?;
        let mut parser = ReplyParser::new();
        let greeting = self
            .timed("the greeting", read_reply(&mut stream, &mut parser))
            .await?
            .map_err(|e| self.with_path(e))?;
        if greeting.code() != WELCOME {
            return Err(BirdError::Protocol(format!(
                "the greeting is {:04} {:?}, not 0001 ... ready",
                greeting.code(),
                greeting.summary()
            )));
        }
        let line = format!("{command}\n");
        self.timed("sending the command", stream.write_all(line.as_bytes()))
            .await?
            .map_err(io("write"))?;
        self.timed("the reply", read_reply(&mut stream, &mut parser))
            .await?
            .map_err(|e| self.with_path(e))
    }

    /// Sends `command` and returns its reply if BIRD answered one of
    /// `expected` codes; a refusal (8xxx, 9xxx) or any other code is an error.
    pub async fn expect(&self, command: &str, expected: &[u16]) -> Result<Reply, BirdError> {
        let reply = self.command(command).await?;
        // The interesting code is the first line's (`0011-vip: enabled`
        // is followed by `0000 `).
        let code = reply.lines.first().map_or(0, |l| l.code);
        if expected.contains(&code) {
            Ok(reply)
        } else if reply.is_error() {
            Err(BirdError::Refused {
                command: command.to_owned(),
                code: reply.code(),
                text: reply.summary().to_owned(),
            })
        } else {
            Err(BirdError::Unexpected {
                command: command.to_owned(),
                code,
                text: reply.summary().to_owned(),
            })
        }
    }

    /// `enable PROTOCOL`; `Ok(true)` if it was disabled until now.
    pub async fn enable(&self, protocol: &str) -> Result<bool, BirdError> {
        check_protocol_name(protocol)?;
        let r = self
            .expect(&format!("enable {protocol}"), &[ENABLED, ALREADY_ENABLED])
            .await?;
        Ok(r.lines.first().is_some_and(|l| l.code == ENABLED))
    }

    /// `disable PROTOCOL`; `Ok(true)` if it was enabled until now.
    pub async fn disable(&self, protocol: &str) -> Result<bool, BirdError> {
        check_protocol_name(protocol)?;
        let r = self
            .expect(
                &format!("disable {protocol}"),
                &[DISABLED, ALREADY_DISABLED],
            )
            .await?;
        Ok(r.lines.first().is_some_and(|l| l.code == DISABLED))
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, BirdError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| BirdError::Timeout {
                path: self.path.clone(),
                what,
                timeout: self.timeout,
            })
    }

    fn with_path(&self, e: ReadError) -> BirdError {
        match e {
            ReadError::Io(source) => BirdError::Io {
                path: self.path.clone(),
                what: "read",
                source,
            },
            ReadError::Closed => BirdError::Io {
                path: self.path.clone(),
                what: "read",
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "BIRD closed the connection in the middle of a reply",
                ),
            },
            ReadError::Bird(e) => e,
        }
    }
}

/// `0011 Enabled`.
const ENABLED: u16 = 11;
/// `0010 Already enabled`.
const ALREADY_ENABLED: u16 = 10;
/// `0009 Disabled`.
const DISABLED: u16 = 9;
/// `0008 Already disabled`.
const ALREADY_DISABLED: u16 = 8;

/// A protocol name as BIRD's configuration allows it (a symbol): letters,
/// digits and `_`, not starting with a digit; nothing a command could hide in.
pub fn check_protocol_name(name: &str) -> Result<(), BirdError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(BirdError::BadCommand(format!(
            "{name:?} is not a BIRD protocol name (letters, digits, '_')"
        )))
    }
}

enum ReadError {
    Io(std::io::Error),
    Closed,
    Bird(BirdError),
}

async fn read_reply(
    stream: &mut tokio::net::UnixStream,
    parser: &mut ReplyParser,
) -> Result<Reply, ReadError> {
    if let Some(r) = parser.next_reply().map_err(ReadError::Bird)? {
        return Ok(r);
    }
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        if let Some(r) = parser.push(&chunk[..n]).map_err(ReadError::Bird)? {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Reply>, BirdError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        if let Some(r) = p.push(bytes)? {
            out.push(r);
        }
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn greeting_and_listing_with_continuations() {
        let text = b"0001 BIRD 2.0.12 ready.\n\
            2002-Name       Proto      Table      State  Since         Info\n\
            1002-device1    Device     ---        up     02:45:42.528  \n \
            vip        Static     master4    down   02:45:42.528  \n \
            uplink     BGP        ---        start  02:45:42.528  Active        \n\
            0000 \n";
        let replies = parse_all(text).expect("parses");
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].code(), 1);
        assert_eq!(replies[0].summary(), "BIRD 2.0.12 ready.");
        let r = &replies[1];
        assert_eq!(r.code(), 0);
        assert_eq!(r.lines.len(), 5);
        assert_eq!(r.lines[0].code, 2002);
        assert_eq!(r.lines[2].code, 1002, "a continuation keeps the code");
        assert!(r.lines[3].text.starts_with("uplink"));
        assert!(!r.is_error());
    }

    #[test]
    fn replies_split_anywhere_are_the_same() {
        let text: &[u8] = b"0001 BIRD 2.0.12 ready.\n0011-vip: enabled\n0000 \n";
        let whole = parse_all(text).expect("parses");
        for cut in 0..text.len() {
            let mut p = ReplyParser::new();
            let mut got = Vec::new();
            for part in [&text[..cut], &text[cut..]] {
                if let Some(r) = p.push(part).expect("parses") {
                    got.push(r);
                }
                while let Some(r) = p.next_reply().expect("parses") {
                    got.push(r);
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
        assert_eq!(whole[1].lines[0].code, 11);
        assert_eq!(whole[1].summary(), "vip: enabled");
    }

    #[test]
    fn errors_are_recognised() {
        let r = &parse_all(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n").expect("parses")[0];
        assert!(r.is_error());
        assert_eq!(r.code(), 9001);
        let r = &parse_all(b"8001 Network not found\r\n").expect("parses")[0];
        assert_eq!((r.code(), r.summary()), (8001, "Network not found"));
        let r = &parse_all(b"0000\n").expect("parses")[0];
        assert_eq!((r.code(), r.summary()), (0, ""));
    }

    #[test]
    fn async_lines_are_skipped() {
        let r = parse_all(b"+log line\n0009-vip: disabled\n0000 \n").expect("parses");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lines[0].code, 9);
    }

    #[test]
    fn junk_is_refused_not_panicked_on() {
        for junk in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b" orphan continuation\n",
            b"12\n",
            b"12345 five digits\n",
            b"0001x\n",
            b"\xff\xfe\xfd\n",
            b"-001 minus\n",
            b"\n",
            b"\x00\x00\x00\x00\n",
        ] {
            match parse_all(junk) {
                Err(BirdError::Protocol(_)) => {}
                other => panic!("{junk:?}: {other:?}"),
            }
        }
        // Incomplete is not an error: more may come.
        assert_eq!(parse_all(b"0001 BIRD").expect("no error"), vec![]);
        assert_eq!(parse_all(b"").expect("no error"), vec![]);
    }

    #[test]
    fn an_endless_reply_is_cut_off() {
        let mut p = ReplyParser::new();
        let line = b"1007-x\n".repeat(MAX_REPLY / 7 + 2);
        assert!(matches!(p.push(&line), Err(BirdError::Protocol(_))));
        let mut p = ReplyParser::new();
        let long = vec![b'1'; MAX_REPLY + 1];
        assert!(matches!(p.push(&long), Err(BirdError::Protocol(_))));
    }

    #[test]
    fn protocol_names_are_symbols() {
        for ok in ["vip", "VIP_2", "_x"] {
            assert!(check_protocol_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2vip", "vip all", "vip\nshutdown", "a-b", "ä"] {
            assert!(check_protocol_name(bad).is_err(), "{bad:?}");
        }
    }
}
