//! `baton announce`: keeps a front's route to the VIP announced in BIRD
//! exactly while the front says it serves.
//!
//! It polls the front's `GET /serving` every `interval` (each poll gets
//! `interval` to answer) and, through BIRD's control socket, enables the
//! protocol that originates the VIP's route (a static protocol exported
//! over BGP) once it has seen `rise` answers 200 in a row, and disables it
//! at the first failure: a 503 (draining, stopping, no back-end), a refused
//! connection, a timeout, anything but 200. It says the current state to
//! BIRD again every `reassert` (a restarted BIRD starts with the protocol
//! disabled, as configured), and disables it when it receives SIGTERM or
//! SIGINT, then exits.
//!
//! It is a process of its own on purpose: when the front dies (SIGKILL, a
//! crash), nobody is left inside it to withdraw anything, but the
//! announcer's next poll is refused and the route goes within one
//! interval, far sooner than BGP's hold time would notice.
//!
//! [`Announcer`] decides (sans-IO: observations in, transitions out);
//! [`run`] polls, talks to BIRD and logs each transition with its reason.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::bird::Bird;

/// What one poll of `/serving` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 200.
    Serving,
    /// Anything else, with a description: `503 draining`, `connection
    /// refused`, `no answer within 100 ms`.
    Not(String),
}

/// What the route should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Announced: the protocol enabled.
    Announce,
    /// Withdrawn: the protocol disabled.
    Withdraw,
}

/// The decision: `rise` consecutive [`Health::Serving`] to announce, one
/// failure to withdraw. Starts undecided, so that an announcer restarted
/// beside a serving front does not withdraw it first.
#[derive(Debug, Clone)]
pub struct Announcer {
    rise: u32,
    streak: u32,
    want: Option<Want>,
}

impl Announcer {
    /// A decision that needs `rise` (at least 1) good polls in a row to announce.
    pub fn new(rise: u32) -> Announcer {
        Announcer {
            rise: rise.max(1),
            streak: 0,
            want: None,
        }
    }

    /// The current decision (`None` until the first one).
    pub fn want(&self) -> Option<Want> {
        self.want
    }

    /// Takes one poll's result; returns the new decision when it changes.
    pub fn observe(&mut self, h: &Health) -> Option<Want> {
        let next = match h {
            Health::Serving => {
                self.streak = self.streak.saturating_add(1);
                if self.streak >= self.rise {
                    Want::Announce
                } else {
                    // Not yet: whatever was decided stands (undecided included).
                    return None;
                }
            }
            Health::Not(_) => {
                self.streak = 0;
                Want::Withdraw
            }
        };
        if self.want == Some(next) {
            None
        } else {
            self.want = Some(next);
            Some(next)
        }
    }
}

/// How [`run`] works.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The front's admin address (`GET /serving`).
    pub admin: SocketAddr,
    /// BIRD's control socket.
    pub bird_socket: std::path::PathBuf,
    /// The BIRD protocol to enable and disable.
    pub protocol: String,
    /// Between polls, and each poll's timeout.
    pub interval: Duration,
    /// Good polls in a row before announcing.
    pub rise: u32,
    /// How often the current state is said to BIRD again.
    pub reassert: Duration,
}

/// BIRD gets this long per command.
const BIRD_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest answer to `/serving` read.
const MAX_ANSWER: usize = 4096;

/// Polls one `GET /serving` on `admin` within `timeout`.
pub async fn poll(admin: SocketAddr, timeout: Duration) -> Health {
    match tokio::time::timeout(timeout, poll_once(admin)).await {
        Ok(h) => h,
        Err(_) => Health::Not(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn poll_once(admin: SocketAddr) -> Health {
    let mut s = match tokio::net::TcpStream::connect(admin).await {
        Ok(s) => s,
        Err(e) => return Health::Not(format!("connect to {admin}: {e}")),
    };
    let req = format!("GET /serving HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Health::Not(format!("write to {admin}: {e}"));
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() >= MAX_ANSWER {
                    break;
                }
            }
            Err(e) if answer.is_empty() => return Health::Not(format!("read from {admin}: {e}")),
            Err(_) => break,
        }
    }
    judge(&answer)
}

/// What an HTTP answer to `GET /serving` means.
pub fn judge(answer: &[u8]) -> Health {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200) => Health::Serving,
        Some(code) => {
            let reason: String = body.trim().chars().take(100).collect();
            Health::Not(if reason.is_empty() {
                code.to_string()
            } else {
                format!("{code} {reason}")
            })
        }
        None if answer.is_empty() => Health::Not("closed without an answer".into()),
        None => Health::Not("not an HTTP answer".into()),
    }
}

/// Runs until `stop` resolves: polls, announces, withdraws; withdraws
/// before returning. An error only if the last withdrawal failed.
pub async fn run(s: Settings, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    crate::bird::check_protocol_name(&s.protocol)?;
    let bird = Bird::new(&s.bird_socket, BIRD_TIMEOUT);
    let mut decide = Announcer::new(s.rise);
    // What BIRD last confirmed, when, and whether the last attempt failed
    // (then it is tried again every interval).
    let mut told: Option<Want> = None;
    let mut last_told = tokio::time::Instant::now();
    let mut failing = false;
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        admin = %s.admin,
        bird = %s.bird_socket.display(),
        protocol = %s.protocol,
        interval_ms = s.interval.as_millis(),
        rise = s.rise,
        "announcer started"
    );
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let health = tokio::select! {
            _ = &mut stop => break,
            h = poll(s.admin, s.interval) => h,
        };
        if let Some(next) = decide.observe(&health) {
            match (&health, next) {
                (Health::Not(why), Want::Withdraw) => {
                    info!(reason = %why, "withdrawing: /serving failed")
                }
                _ => info!(
                    rise = s.rise,
                    "announcing: /serving answered 200 {} times in a row", s.rise
                ),
            }
        }
        let Some(want) = decide.want() else {
            continue;
        };
        let reassert = told == Some(want);
        if reassert && !failing && last_told.elapsed() < s.reassert {
            continue;
        }
        match tell(&bird, &s.protocol, want).await {
            Ok(changed) => {
                if reassert && changed {
                    // BIRD had lost the state: it restarted (its config
                    // starts the protocol disabled), or someone changed it.
                    warn!(protocol = %s.protocol, ?want, "BIRD had the other state (restarted?): set again");
                } else if !reassert {
                    info!(protocol = %s.protocol, ?want, changed, "BIRD told");
                }
                told = Some(want);
                last_told = tokio::time::Instant::now();
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, ?want, "cannot tell BIRD; trying again every interval");
                }
                failing = true;
            }
        }
    }
    info!("stopping: withdrawing");
    tell(&bird, &s.protocol, Want::Withdraw)
        .await
        .context("withdrawing the announcement on the way out")?;
    info!("withdrawn; announcer stopped");
    Ok(())
}

/// Enables or disables the protocol; `Ok(true)` if BIRD's state changed.
async fn tell(bird: &Bird, protocol: &str, want: Want) -> Result<bool, crate::bird::BirdError> {
    match want {
        Want::Announce => bird.enable(protocol).await,
        Want::Withdraw => bird.disable(protocol).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not(why: &str) -> Health {
        Health::Not(why.into())
    }

    #[test]
    fn rises_after_n_good_polls_and_falls_at_the_first_bad_one() {
        let mut a = Announcer::new(2);
        assert_eq!(a.observe(&Health::Serving), None);
        assert_eq!(a.want(), None, "undecided until rise is reached");
        assert_eq!(a.observe(&Health::Serving), Some(Want::Announce));
        assert_eq!(a.observe(&Health::Serving), None);
        assert_eq!(a.observe(&not("503 draining")), Some(Want::Withdraw));
        assert_eq!(a.observe(&not("refused")), None);
        // A good poll between bad ones does not announce.
        assert_eq!(a.observe(&Health::Serving), None);
        assert_eq!(a.observe(&not("timeout")), None);
        assert_eq!(a.observe(&Health::Serving), None);
        assert_eq!(a.observe(&Health::Serving), Some(Want::Announce));
    }

    #[test]
    fn a_first_failure_withdraws_at_once() {
        let mut a = Announcer::new(3);
        assert_eq!(a.observe(&not("refused")), Some(Want::Withdraw));
        let mut one = Announcer::new(0);
        assert_eq!(one.observe(&Health::Serving), Some(Want::Announce));
    }

    #[test]
    fn answers_are_judged() {
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nserving\n"),
            Health::Serving
        );
        assert_eq!(
            judge(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndraining\n"),
            not("503 draining")
        );
        assert_eq!(judge(b"HTTP/1.0 404 Not Found\r\n\r\n"), not("404"));
        assert_eq!(judge(b""), not("closed without an answer"));
        assert_eq!(judge(b"SSH-2.0-OpenSSH\r\n"), not("not an HTTP answer"));
        assert_eq!(judge(b"HTTP/1.1 2"), not("not an HTTP answer"));
        assert_eq!(
            judge(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            not("not an HTTP answer")
        );
    }
}
