//! Driving a lab from outside: a guard that always tears it down, commands in
//! a host's namespace, curl and wrk runs, interface counters. Used by the
//! demo, the benchmarks and the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use baton_lab::{zipf_docroot, OriginSpec};

/// What [`Lab::up`] builds beyond the name; the default is what `baton lab
/// up` does without options: two back-ends, the sample docroot, no extras,
/// no origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabOptions {
    /// How many back-ends.
    pub backends: usize,
    /// The back-ends' (and the origin's) document root; `None`: the sample one.
    pub docroot: Option<PathBuf>,
    /// `--front-extra`.
    pub front_extra: Option<String>,
    /// `--back-extra`.
    pub back_extra: Option<String>,
    /// An origin host, and every back-end in caching mode in front of it.
    pub origin: Option<OriginSpec>,
    /// The front's group of each back-end, in order (`--backend-groups`).
    pub backend_groups: Vec<String>,
    /// HTTPS on the VIP too (`--tls`).
    pub tls: bool,
    /// How many fronts (`--fronts`; 1: today's topology).
    pub fronts: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            backends: baton_lab::LabSpec::DEFAULT_BACKENDS,
            docroot: None,
            front_extra: None,
            back_extra: None,
            origin: None,
            backend_groups: Vec::new(),
            tls: false,
            fronts: 1,
        }
    }
}

/// A running lab that is torn down when dropped, even on panic.
#[derive(Debug)]
pub struct Lab {
    /// The lab name.
    pub name: String,
    /// What `baton lab up` reported.
    pub info: baton_lab::LabInfo,
}

impl Lab {
    /// Brings a lab up through the real CLI (`baton lab up`), so that what is
    /// tested is what users run.
    pub fn up(baton: &Path, name: &str, opts: LabOptions) -> Result<Lab> {
        let mut cmd = Command::new(baton);
        cmd.args([
            "lab",
            "up",
            "--name",
            name,
            "--backends",
            &opts.backends.to_string(),
            "--fronts",
            &opts.fronts.to_string(),
        ]);
        if let Some(d) = &opts.docroot {
            cmd.arg("--docroot").arg(d);
        }
        if let Some(x) = &opts.front_extra {
            cmd.arg("--front-extra").arg(x);
        }
        if let Some(x) = &opts.back_extra {
            cmd.arg("--back-extra").arg(x);
        }
        if !opts.backend_groups.is_empty() {
            cmd.arg("--backend-groups")
                .arg(opts.backend_groups.join(","));
        }
        if opts.tls {
            cmd.arg("--tls");
        }
        if let Some(o) = &opts.origin {
            cmd.arg("--origin")
                .arg("--cache-bytes")
                .arg(o.cache_bytes.to_string());
            if let Some(rate) = &o.rate {
                cmd.arg("--origin-rate").arg(rate);
            }
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .context("running baton lab up")?;
        if !out.status.success() {
            // `up` cleans up after itself; make sure anyway.
            let _ = baton_lab::down(name);
            bail!("baton lab up --name {name} failed ({})", out.status);
        }
        let info: baton_lab::LabInfo =
            serde_json::from_slice(&out.stdout).context("parsing the output of baton lab up")?;
        Ok(Lab {
            name: name.to_string(),
            info,
        })
    }

    /// The namespace of `host`.
    pub fn netns(&self, host: &str) -> Result<&str> {
        self.info
            .hosts
            .get(host)
            .map(|h| h.netns.as_str())
            .with_context(|| format!("lab {} has no host {host}", self.name))
    }

    /// A command to run inside `host`'s namespace.
    pub fn cmd(&self, host: &str, program: &str) -> Result<Command> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.netns(host)?, program]);
        Ok(c)
    }

    /// Runs `argv` in `host`, capturing its output.
    pub fn run(&self, host: &str, argv: &[&str]) -> Result<Output> {
        let (prog, args) = argv.split_first().context("empty command")?;
        self.cmd(host, prog)?
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {prog} in {host}"))
    }

    /// The VIP URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.info.vip, self.info.port, path)
    }

    /// The back-ends' document root.
    pub fn docroot(&self) -> &Path {
        &self.info.docroot
    }

    /// The front's `/stats` (with several fronts, front1's: see
    /// [`Lab::fronts`] and [`Lab::stats_of`] for the others).
    pub fn front_stats(&self) -> Result<serde_json::Value> {
        self.stats_of("front")
    }

    /// The front hosts: `front`, or `front1`..`frontN` with several.
    pub fn fronts(&self) -> Vec<String> {
        let n = self.info.fronts;
        (1..=n)
            .map(|k| baton_lab::topology::front_name(k, n))
            .collect()
    }

    /// `/stats` of front `host`.
    pub fn stats_of(&self, host: &str) -> Result<serde_json::Value> {
        let out = self.run(
            host,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:9100/stats",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "{host} /stats unavailable: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("parsing {host}'s /stats"))
    }

    /// Sends `method path` to front `host`'s admin address; returns the
    /// status and the body (e.g. `POST /drain`, `GET /serving`).
    pub fn admin(&self, host: &str, method: &str, path: &str) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:9100{path}");
        let out = self.run(
            host,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code
            .trim()
            .parse()
            .with_context(|| format!("{method} {path} on {host}: {text}"))?;
        Ok((code, body.to_owned()))
    }

    /// The fronts (by K) in the router's next-hop group for the VIP now
    /// (labs with several fronts).
    pub fn router_group(&self) -> Result<Vec<usize>> {
        Ok(baton_lab::fronts::group_members(self.netns("router")?)?)
    }

    /// Forgets every front's latency samples.
    pub fn reset_latency(&self) -> Result<()> {
        for front in self.fronts() {
            let out = self.run(
                &front,
                &[
                    "curl",
                    "-sf",
                    "-X",
                    "POST",
                    "http://127.0.0.1:9100/stats/reset-latency",
                ],
            )?;
            if !out.status.success() {
                bail!("resetting {front}'s latency failed");
            }
        }
        Ok(())
    }

    /// RX/TX byte and packet counters of `iface` in `host`.
    pub fn nic(&self, host: &str, iface: &str) -> Result<NicCounters> {
        let read = |what: &str| -> Result<u64> {
            let path = format!("/sys/class/net/{iface}/statistics/{what}");
            let out = self.run(host, &["cat", &path])?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .with_context(|| format!("{host}: {path}"))
        };
        Ok(NicCounters {
            rx_bytes: read("rx_bytes")?,
            tx_bytes: read("tx_bytes")?,
            rx_packets: read("rx_packets")?,
            tx_packets: read("tx_packets")?,
        })
    }

    /// Runs curl in the client namespace; returns what curl measured.
    pub fn curl(&self, path: &str, out_file: &Path, extra: &[&str]) -> Result<CurlResult> {
        self.curl_url(&self.url(path), out_file, extra)
    }

    /// [`Lab::curl`] for any URL of the lab.
    pub fn curl_url(&self, url: &str, out_file: &Path, extra: &[&str]) -> Result<CurlResult> {
        let out_s = out_file.to_string_lossy().to_string();
        let mut argv = vec![
            "curl", "-s", "--max-time", "60", "-o", out_s.as_str(), "-w",
            "{\"code\":\"%{http_code}\",\"exit\":%{exitcode},\"size\":%{size_download},\"ttfb\":%{time_starttransfer},\"total\":%{time_total},\"connects\":%{num_connects}}\\n",
        ];
        argv.extend_from_slice(extra);
        argv.push(url);
        let out = self.run("client", &argv)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| {
            format!(
                "curl {url}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The HTTPS URL of `path` on the VIP (a lab made with `tls`), by the
    /// certificate's host name: pass [`Lab::tls_args`] to curl with it.
    pub fn https_url(&self, path: &str) -> Result<String> {
        let (Some(port), Some(name)) = (self.info.tls_port, &self.info.server_name) else {
            bail!("lab {} serves no HTTPS (made without --tls)", self.name);
        };
        Ok(format!("https://{name}:{port}{path}"))
    }

    /// curl's options for [`Lab::https_url`]: trust the lab's CA, resolve
    /// its host name to the VIP.
    pub fn tls_args(&self) -> Result<Vec<String>> {
        let (Some(port), Some(name), Some(ca)) = (
            self.info.tls_port,
            &self.info.server_name,
            &self.info.ca_file,
        ) else {
            bail!("lab {} serves no HTTPS (made without --tls)", self.name);
        };
        Ok(vec![
            "--cacert".into(),
            ca.to_string_lossy().into_owned(),
            "--resolve".into(),
            format!("{name}:{port}:{}", self.info.vip),
        ])
    }

    /// [`Lab::curl`] over HTTPS (`extra` as for `curl`, e.g. `--tlsv1.2`).
    pub fn curl_https(&self, path: &str, out_file: &Path, extra: &[&str]) -> Result<CurlResult> {
        let url = self.https_url(path)?;
        let tls = self.tls_args()?;
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        self.curl_url(&url, out_file, &args)
    }

    /// Runs wrk in the client namespace against `path` on the VIP (bounded by `seconds`).
    pub fn wrk(
        &self,
        path: &str,
        threads: u32,
        conns: u32,
        seconds: u32,
        close: bool,
    ) -> Result<WrkResult> {
        self.wrk_url(&self.url(path), threads, conns, seconds, close)
    }

    /// Runs wrk in the client namespace against any `url` (an address of
    /// the lab); `close` sends `Connection: close`, so every request gets a
    /// connection of its own. Killed if it outlives `seconds` by 30 s.
    pub fn wrk_url(
        &self,
        url: &str,
        threads: u32,
        conns: u32,
        seconds: u32,
        close: bool,
    ) -> Result<WrkResult> {
        let script = std::env::temp_dir().join(format!("baton-wrk-{}.lua", std::process::id()));
        std::fs::write(&script, WRK_LUA).context("writing the wrk script")?;
        let (t, c, d) = (
            threads.to_string(),
            conns.to_string(),
            format!("{seconds}s"),
        );
        let limit = format!("{}s", u64::from(seconds) + 30);
        let s = script.to_string_lossy().to_string();
        let mut argv = vec![
            "timeout",
            "-k",
            "5s",
            &limit,
            "wrk",
            "-t",
            &t,
            "-c",
            &c,
            "-d",
            &d,
            "--timeout",
            "5s",
            "-s",
            &s,
        ];
        if close {
            argv.extend_from_slice(&["-H", "Connection: close"]);
        }
        argv.push(url);
        let out = self.run("client", &argv);
        let _ = std::fs::remove_file(&script);
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("{\"requests\""))
            .with_context(|| {
                format!(
                    "wrk printed no summary: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        serde_json::from_str(line).context("parsing wrk's summary")
    }

    /// The tail of a host's daemon log.
    pub fn log_tail(&self, host: &str, lines: usize) -> String {
        let Some(log) = self.info.hosts.get(host).and_then(|h| h.log.clone()) else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = baton_lab::down(&self.name) {
            eprintln!("baton: tearing down lab {}: {e}", self.name);
        }
    }
}

/// Interface counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct NicCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl NicCounters {
    /// `self - earlier`.
    pub fn since(&self, earlier: &NicCounters) -> NicCounters {
        NicCounters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }
}

/// What curl's `-w` reported.
#[derive(Debug, Clone, Deserialize)]
pub struct CurlResult {
    /// The HTTP status; 0 when no response came (curl's "000").
    #[serde(deserialize_with = "status_code")]
    pub code: u16,
    /// curl's exit code: 0, or why the transfer failed (56: the connection
    /// was reset, 28: timed out, ...).
    pub exit: u32,
    pub size: u64,
    /// Seconds to the first response byte.
    pub ttfb: f64,
    pub total: f64,
    pub connects: u32,
}

/// curl prints a missing status as "000", which is no JSON number.
fn status_code<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u16, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// What the wrk script reported.
#[derive(Debug, Clone, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub bytes: u64,
    pub duration_us: u64,
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    pub errors_status: u64,
    pub errors_timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
    /// All errors.
    pub fn errors(&self) -> u64 {
        self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_status
            + self.errors_timeout
    }
}

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"bytes":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/baton-{tag}-{pid}-{n}`.
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("baton-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Per-back-end handoff counts from `/stats`.
pub fn handoffs_by_backend(stats: &serde_json::Value) -> BTreeMap<String, u64> {
    stats["backends"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or("?").to_string(),
                        b["handoffs"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
