//! The typed loader: loads the embedded program, attaches it at tc ingress,
//! and exposes its maps as flows, statistics and parked frames.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError, MapInfo, MapType, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{
    self, NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use baton_proto::FlowKey;

use crate::abi::{self, RawConfig, RawFlowKey, RawFlowVal};
use crate::error::BpfError;

pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder.bpf.o"));
/// The same program, its FLOWS and STATS maps pinned by name.
static OBJECT_PINNED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder-pinned.bpf.o"));
/// The TCX link's pin, next to the maps'.
const LINK_PIN: &str = "link";
/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const PROGRAM: &str = "btcp_ingress";
const FLOWS: &str = "FLOWS";
const STATS: &str = "STATS";
const PARKED: &str = "PARKED";
const SCRATCH: &str = "SCRATCH";
const CONFIG: &str = "CONFIG";
/// `BPF_EXIST` (include/uapi/linux/bpf.h): update an element only if it exists.
const BPF_EXIST: u32 = 2;
/// The `iface` of errors from a forwarder loaded with [`Forwarder::load`].
const UNATTACHED: &str = "(unattached)";

// The front keeps these in async tasks.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Forwarder>();
    assert_send::<ParkedRing>();
};

/// An error and its causes on one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What the forwarder does with a flow's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Keep them in the parked ring and drop them: the handoff is under way.
    Park,
    /// Rewrite the MACs and redirect them to the back-end.
    Forward,
    /// As [`Action::Forward`]; the back-end has reported the close, so a bare
    /// SYN (a new connection reusing the 4-tuple) deletes the entry and passes.
    ForwardClosing,
}

/// Where a forwarded flow's packets go: out of `ifindex`, on the same L2 segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForwardTarget {
    /// The egress interface (the front's NIC).
    pub ifindex: u32,
    /// The back-end's MAC.
    pub dst_mac: [u8; 6],
    /// The front's own MAC, so the bridge never learns the client's MAC on the front's port.
    pub src_mac: [u8; 6],
}

/// Whose a flow's entry is: the back-end that serves (or is offered) it and
/// the front's handoff id. The program ignores it; it is kept in the entry
/// so that a restarted front can rebuild its view of the flows from the
/// pinned map alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The back-end's address (as in its `[[backend]]` control address).
    pub backend: Ipv4Addr,
    /// The handoff's id on the control channel.
    pub id: u64,
}

/// One FLOWS entry as the program last left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// What the program does with the flow.
    pub action: Action,
    /// Whose it is.
    pub owner: Owner,
    /// Set for [`Action::Forward`] and [`Action::ForwardClosing`].
    pub target: Option<ForwardTarget>,
    /// Last packet (or control-plane change), in [`Forwarder::now_ns`] time.
    pub last_seen_ns: u64,
    /// Packets seen for the flow since the entry was last written (park,
    /// forward, mark closing).
    pub packets: u64,
    /// Bytes seen since then, Ethernet header included.
    pub bytes: u64,
}

/// The VIP and the service ports the program guards: a packet to one of
/// them that matches no flow entry and that no socket of this host would
/// take is dropped rather than left to the kernel, which would answer it
/// with a reset (or refuse a SYN without a listener). The client
/// retransmits, and reaches the front that knows the flow, or this one once
/// it does. Packets to any other address or port (the front's own traffic)
/// pass untouched, as do all packets of a forwarder without a guard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipGuard {
    /// The VIP (the destination address of clients' packets).
    pub vip: Ipv4Addr,
    /// Its service ports: 1 to [`crate::MAX_SERVICE_PORTS`], none 0.
    pub ports: Vec<u16>,
}

/// Packet counters, summed over CPUs, since the program was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// IPv4/TCP packets of flows without an entry, left to the front's kernel.
    pub passed: u64,
    /// Packets redirected to a back-end.
    pub forwarded: u64,
    /// Packets of parked flows copied into the ring (and dropped).
    pub parked: u64,
    /// Packets of parked flows dropped without a copy: ring full or frame over 64 KiB.
    pub park_lost: u64,
    /// Frames that are not Ethernet/IPv4/TCP, or truncated: passed.
    pub not_ipv4_tcp: u64,
    /// IPv4 fragments: passed, since their ports cannot be trusted.
    pub fragments: u64,
    /// Helper failures (dropped) and entries with an unknown action (passed).
    pub errors: u64,
    /// Closing entries deleted because a new SYN reused their 4-tuple (the
    /// SYN is then counted as a packet without an entry).
    pub syn_replaced: u64,
    /// Packets to a guarded port without an entry that no socket takes
    /// (the kernel would reset them): dropped.
    pub unknown_dropped: u64,
    /// SYNs to a guarded port with no socket at all, no listener (the
    /// kernel would refuse them): dropped.
    pub no_listener_dropped: u64,
    /// ACKs to a guarded port that a listener takes by their SYN cookie: passed.
    pub syncookie_passed: u64,
}

/// A frame kept while its flow was parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedFrame {
    /// The flow it belongs to.
    pub key: FlowKey,
    /// The whole frame from the Ethernet header on, as it arrived.
    pub frame: Vec<u8>,
}

/// How the program is attached at tc ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// A TCX link (Linux 6.6+): detached when its fd closes, whatever the thread's namespace.
    Tcx,
    /// A direct-action filter on a `clsact` qdisc, via netlink (older kernels). The
    /// qdisc stays after detaching; detaching talks netlink in the calling
    /// thread's network namespace, so drop the forwarder there.
    Clsact,
}

/// The verdict of one [`Forwarder::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `TC_ACT_OK`: the front's kernel gets the packet.
    Pass,
    /// `TC_ACT_SHOT`.
    Drop,
    /// `TC_ACT_REDIRECT`.
    Redirect,
    /// Any other return value.
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(retval: u32) -> Self {
        match retval {
            0 => Verdict::Pass,
            2 => Verdict::Drop,
            7 => Verdict::Redirect,
            other => Verdict::Other(other),
        }
    }
}

/// The outcome of running the program on one frame with `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// What the program returned.
    pub verdict: Verdict,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// Mean run time per repetition, as measured by the kernel.
    pub duration_ns: u32,
}

/// The parked-frame ring, taken once from [`Forwarder::parked`].
///
/// Its fd becomes readable when frames are waiting (register it with
/// `tokio::io::unix::AsyncFd`), then drain with [`ParkedRing::next`].
pub struct ParkedRing {
    ring: RingBuf<MapData>,
    poll_fd: Option<OwnedFd>,
    malformed: u64,
}

impl ParkedRing {
    /// The oldest frame not yet read, or `None` when the ring is empty.
    #[allow(clippy::should_implement_trait)] // items are not a stream: new ones arrive later
    pub fn next(&mut self) -> Option<ParkedFrame> {
        // Each pass consumes one record, so this ends when the ring is empty.
        loop {
            let item = self.ring.next()?;
            match abi::parse_parked_record(&item) {
                Some((key, frame)) => {
                    return Some(ParkedFrame {
                        key,
                        frame: frame.to_vec(),
                    })
                }
                None => self.malformed += 1,
            }
        }
    }

    /// An owned duplicate of the ring's descriptor, to register with a
    /// poller that must own its fd (readable when frames wait).
    pub fn poll_fd(&self) -> std::io::Result<OwnedFd> {
        match &self.poll_fd {
            Some(fd) => fd.try_clone(),
            None => Err(std::io::Error::other(
                "the ring's descriptor could not be duplicated",
            )),
        }
    }

    /// Records skipped because they were shorter than their header said (an ABI defect).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl AsRawFd for ParkedRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl fmt::Debug for ParkedRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkedRing")
            .field("fd", &self.ring.as_raw_fd())
            .field("malformed", &self.malformed)
            .finish()
    }
}

/// How [`Forwarder::attach_pinned`] found the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// No link was pinned: a new one was attached (and pinned, if pinned).
    Fresh,
    /// The pinned link now runs this program: the flows were never unsteered.
    Adopted,
    /// A pinned link was unusable (the reason), so it was replaced.
    StaleLink(String),
}

/// The loaded forwarder; attached at tc ingress unless made with [`Forwarder::load`].
/// Dropping it detaches and unloads the program.
pub struct Forwarder {
    iface: String,
    mode: Option<AttachMode>,
    /// Set when the maps and the link are pinned: the interface's pin directory.
    pins: Option<PathBuf>,
    /// The pinned TCX link (dropping it closes our descriptor only).
    link: Option<PinnedLink>,
    /// How the pinned attach went: a link adopted, or why not.
    adoption: Adoption,
    flows: HashMap<MapData, RawFlowKey, RawFlowVal>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, RawConfig>,
    ring: Option<RingBuf<MapData>>,
    ring_fd: Option<OwnedFd>,
    // Owns the program and its link; dropped last.
    ebpf: Ebpf,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("ring_taken", &self.ring.is_none())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Loads the program and attaches it at tc ingress of `iface`: a TCX link,
    /// or a clsact filter where TCX is unavailable. `iface` is resolved in
    /// the calling thread's network namespace. Guards nothing: every packet
    /// without an entry passes.
    pub fn attach(iface: &str) -> Result<Self, BpfError> {
        Self::attach_guarded(iface, None)
    }

    /// Like [`Forwarder::attach`], guarding `guard` from the first packet.
    pub fn attach_guarded(iface: &str, guard: Option<&VipGuard>) -> Result<Self, BpfError> {
        let mut forwarder = Self::load_for(iface, None, guard)?;
        let tcx = forwarder.attach_as(AttachMode::Tcx);
        if let Err(tcx_error) = tcx {
            let tcx_error = match &tcx_error {
                BpfError::Attach { source, .. } => describe(source.as_ref()),
                other => describe(other),
            };
            forwarder
                .attach_as(AttachMode::Clsact)
                .map_err(|e| match e {
                    BpfError::Attach {
                        iface,
                        step,
                        source,
                    } => BpfError::Attach {
                        iface,
                        step: format!("{step}, after the TCX link failed: {tcx_error}"),
                        source,
                    },
                    other => other,
                })?;
        }
        Ok(forwarder)
    }

    /// Like [`Forwarder::attach`], with no fallback from the given mode.
    pub fn attach_with(iface: &str, mode: AttachMode) -> Result<Self, BpfError> {
        let mut forwarder = Self::load_for(iface, None, None)?;
        forwarder.attach_as(mode)?;
        Ok(forwarder)
    }

    /// Loads the program without attaching it, for [`Forwarder::test_run`] and benchmarks.
    pub fn load() -> Result<Self, BpfError> {
        Self::load_for(UNATTACHED, None, None)
    }

    /// Attaches to `iface` with its maps and TCX link pinned under
    /// `root/<iface>/v<ABI>/` on a bpf filesystem, so that they outlive
    /// this process: the program keeps steering every flow while no front
    /// runs, and the next `attach_pinned` adopts them. If a link is pinned
    /// there, the new program replaces the old one on it atomically
    /// (`BPF_LINK_UPDATE`: no packet sees neither); the maps (flows, kept
    /// frames, counters) are the pinned ones. Pins of another ABI version,
    /// or a pinned map of another layout, are refused with an error that
    /// says what to do; nothing is misread. TCX only. Guards nothing.
    pub fn attach_pinned(iface: &str, root: &Path) -> Result<Self, BpfError> {
        Self::attach_pinned_guarded(iface, root, None)
    }

    /// Like [`Forwarder::attach_pinned`], guarding `guard`: the guard is in
    /// place before the program replaces a pinned one, so no packet sees a
    /// program without it. The program left pinned when this process ends
    /// keeps guarding (a killed front's clients retransmit, not reset).
    pub fn attach_pinned_guarded(
        iface: &str,
        root: &Path,
        guard: Option<&VipGuard>,
    ) -> Result<Self, BpfError> {
        let dir = prepare_pin_dir(iface, root)?;
        let mut forwarder = Self::load_for(iface, Some(&dir), guard)?;
        forwarder.pins = Some(dir.clone());
        let link_path = dir.join(LINK_PIN);
        if link_path.exists() {
            match forwarder.adopt_link(&link_path) {
                Ok(()) => {
                    forwarder.adoption = Adoption::Adopted;
                    return Ok(forwarder);
                }
                Err(why) => {
                    // A link whose device is gone (the interface was made
                    // again) or of another kind: useless, and in the way.
                    std::fs::remove_file(&link_path).map_err(|source| BpfError::Sys {
                        iface: iface.to_owned(),
                        step: "removing a stale link pin",
                        source,
                    })?;
                    forwarder.adoption = Adoption::StaleLink(why);
                }
            }
        }
        let id = forwarder.attach_as(AttachMode::Tcx)?;
        let attach_error =
            |step: &str, e: Box<dyn std::error::Error + Send + Sync>| BpfError::Attach {
                iface: iface.to_owned(),
                step: step.to_owned(),
                source: e,
            };
        let program = forwarder.program_mut()?;
        let link = program
            .take_link(id.ok_or_else(|| {
                attach_error("taking the TCX link", "no link id".to_owned().into())
            })?)
            .map_err(|e| attach_error("taking the TCX link", Box::new(e)))?;
        let link =
            FdLink::try_from(link).map_err(|e| attach_error("taking the TCX link", Box::new(e)))?;
        let pinned = link
            .pin(&link_path)
            .map_err(|e| attach_error("pinning the TCX link", Box::new(e)))?;
        forwarder.link = Some(pinned);
        Ok(forwarder)
    }

    /// Removes the pins of `iface` under `root` (every ABI version): the
    /// program detaches and the maps go once no process holds them. Returns
    /// the pin directories removed (none if there were none).
    pub fn unpin(iface: &str, root: &Path) -> io::Result<Vec<PathBuf>> {
        let dir = root.join(iface);
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            // The link first: the program stops steering before its maps go.
            let link = path.join(LINK_PIN);
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::fs::remove_dir_all(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(&dir)?;
        Ok(removed)
    }

    /// The pin directory, if this forwarder is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_deref()
    }

    /// Whether [`Forwarder::attach_pinned`] took over a pinned link.
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    fn adopt_link(&mut self, path: &Path) -> Result<(), String> {
        let link: FdLink = PinnedLink::from_pin(path)
            .map_err(|e| format!("opening the pin: {}", describe(&e)))?
            .into();
        let link = SchedClassifierLink::try_from(link)
            .map_err(|e| format!("not a TCX link: {}", describe(&e)))?;
        let iface = self.iface.clone();
        let program = self.program_mut().map_err(|e| describe(&e))?;
        program
            .attach_to_link(link)
            .map_err(|e| format!("replacing the program on it: {}", describe(&e)))?;
        // The update succeeds on a link whose device is gone: make sure the
        // program now runs on this interface.
        let ours = self.program_id().map_err(|e| describe(&e))?;
        let (_, attached) = SchedClassifier::query_tcx(&iface, TcAttachType::Ingress)
            .map_err(|e| format!("querying {iface}'s TCX programs: {}", describe(&e)))?;
        if !attached.iter().any(|p| p.id() == ours) {
            return Err(format!("the link is not attached to {iface}"));
        }
        self.mode = Some(AttachMode::Tcx);
        // Keep the pin; the program holds the link's descriptor.
        self.link = Some(PinnedLink::from_pin(path).map_err(|e| describe(&e))?);
        Ok(())
    }

    /// The interface given to `attach`.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// How the program is attached; `None` after [`Forwarder::load`].
    pub fn attach_mode(&self) -> Option<AttachMode> {
        self.mode
    }

    /// The kernel's id of the loaded program (as `bpftool prog show id` takes it).
    pub fn program_id(&self) -> Result<u32, BpfError> {
        let info = self
            .program()?
            .info()
            .map_err(|e| self.program_error("querying program info", e))?;
        Ok(info.id())
    }

    /// Parks `key`: its packets are kept in the ring and dropped. Replaces any entry.
    pub fn park(&mut self, key: &FlowKey, owner: Owner) -> Result<(), BpfError> {
        self.write_entry(
            key,
            RawFlowVal {
                action: abi::ACTION_PARK,
                backend_ip: u32::from_ne_bytes(owner.backend.octets()),
                handoff_id: owner.id,
                ..RawFlowVal::default()
            },
        )
    }

    /// Forwards `key` to `to`. Replaces any entry.
    pub fn forward(
        &mut self,
        key: &FlowKey,
        to: &ForwardTarget,
        owner: Owner,
    ) -> Result<(), BpfError> {
        let value = self.forward_value(key, to, abi::ACTION_FORWARD, owner)?;
        self.write_entry(key, value)
    }

    /// A checked forwarding entry: never to a group address, never from
    /// interface 0.
    fn forward_value(
        &self,
        key: &FlowKey,
        to: &ForwardTarget,
        action: u32,
        owner: Owner,
    ) -> Result<RawFlowVal, BpfError> {
        let invalid = |reason| BpfError::InvalidTarget {
            iface: self.iface.clone(),
            key: *key,
            reason,
        };
        if to.ifindex == 0 {
            return Err(invalid("ifindex 0"));
        }
        // Group (incl. broadcast) addresses would flood the segment with the client's packets.
        if to.dst_mac[0] & 1 != 0 || to.dst_mac == [0; 6] {
            return Err(invalid("destination MAC is not a unicast address"));
        }
        if to.src_mac[0] & 1 != 0 || to.src_mac == [0; 6] {
            return Err(invalid("source MAC is not a unicast address"));
        }
        Ok(RawFlowVal {
            action,
            ifindex: to.ifindex,
            dst_mac: to.dst_mac,
            src_mac: to.src_mac,
            backend_ip: u32::from_ne_bytes(owner.backend.octets()),
            handoff_id: owner.id,
            ..RawFlowVal::default()
        })
    }

    /// Marks `key`'s entry as closing (the back-end reported the close): it
    /// keeps forwarding to `to`, and a bare SYN may now replace it. Only then,
    /// since on a live flow a blind attacker guessing the 4-tuple could
    /// otherwise reset the connection with one SYN. One system call: the
    /// caller knows the entry forwards to `to` (a parked entry would be
    /// turned into a forwarding one). Returns whether an entry was there;
    /// an absent one is not created (a new SYN may have replaced it).
    pub fn mark_closing(
        &mut self,
        key: &FlowKey,
        to: &ForwardTarget,
        owner: Owner,
    ) -> Result<bool, BpfError> {
        let mut value = self.forward_value(key, to, abi::ACTION_FORWARD_CLOSING, owner)?;
        value.last_seen_ns = Self::now_ns();
        match self
            .flows
            .insert(RawFlowKey::from(key), value, u64::from(BPF_EXIST))
        {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(self.map_error("marking an entry closing", FLOWS, e)),
        }
    }

    /// Removes `key`'s entry: its packets go to the front's kernel again. Absent is fine.
    pub fn remove(&mut self, key: &FlowKey) -> Result<(), BpfError> {
        match self.flows.remove(&RawFlowKey::from(key)) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(self.map_error("removing an entry", FLOWS, e)),
        }
    }

    /// The entries of the FLOWS map, in no particular order. Two system
    /// calls per entry: for a few keys, [`Forwarder::entry`] is cheaper.
    pub fn entries(&self) -> Result<Vec<(FlowKey, FlowEntry)>, BpfError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            let (raw_key, raw) = item.map_err(|e| self.map_error("iterating", FLOWS, e))?;
            let key = FlowKey::from(raw_key);
            out.push((key, self.decode_entry(key, &raw)?));
        }
        Ok(out)
    }

    /// The entry of one flow, if the map has it (one system call).
    pub fn entry(&self, key: &FlowKey) -> Result<Option<FlowEntry>, BpfError> {
        match self.flows.get(&RawFlowKey::from(key), 0) {
            Ok(raw) => self.decode_entry(*key, &raw).map(Some),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.map_error("looking up", FLOWS, e)),
        }
    }

    fn decode_entry(&self, key: FlowKey, raw: &RawFlowVal) -> Result<FlowEntry, BpfError> {
        let (action, target) = match raw.action {
            abi::ACTION_PARK => (Action::Park, None),
            abi::ACTION_FORWARD | abi::ACTION_FORWARD_CLOSING => (
                if raw.action == abi::ACTION_FORWARD {
                    Action::Forward
                } else {
                    Action::ForwardClosing
                },
                Some(ForwardTarget {
                    ifindex: raw.ifindex,
                    dst_mac: raw.dst_mac,
                    src_mac: raw.src_mac,
                }),
            ),
            action => {
                return Err(BpfError::UnknownAction {
                    iface: self.iface.clone(),
                    key,
                    action,
                })
            }
        };
        Ok(FlowEntry {
            action,
            owner: Owner {
                backend: Ipv4Addr::from(raw.backend_ip.to_ne_bytes()),
                id: raw.handoff_id,
            },
            target,
            last_seen_ns: raw.last_seen_ns,
            packets: raw.packets,
            bytes: raw.bytes,
        })
    }

    /// The packet counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, BpfError> {
        let read = |index: u32| -> Result<u64, BpfError> {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(|e| self.map_error("reading a counter", STATS, e))?;
            Ok(per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        Ok(Stats {
            unknown_dropped: read(abi::STAT_UNKNOWN_DROPPED)?,
            no_listener_dropped: read(abi::STAT_NO_LISTENER_DROPPED)?,
            syncookie_passed: read(abi::STAT_SYNCOOKIE_PASSED)?,
            passed: read(abi::STAT_PASSED)?,
            forwarded: read(abi::STAT_FORWARDED)?,
            parked: read(abi::STAT_PARKED)?,
            park_lost: read(abi::STAT_PARK_LOST)?,
            not_ipv4_tcp: read(abi::STAT_NOT_IPV4_TCP)?,
            fragments: read(abi::STAT_FRAGMENT)?,
            errors: read(abi::STAT_ERROR)?,
            syn_replaced: read(abi::STAT_SYN_REPLACED)?,
        })
    }

    /// Guards `guard` from now on (`None`: guards nothing, every packet
    /// without an entry passes). One map write, which the program sees at
    /// its next packet; a reload calls it.
    pub fn set_guard(&mut self, guard: Option<&VipGuard>) -> Result<(), BpfError> {
        let raw = config_value(&self.iface, guard)?;
        self.config
            .set(0, raw, 0)
            .map_err(|e| self.map_error("writing the guard", CONFIG, e))
    }

    /// What the program guards now, as read back from its map.
    pub fn guard(&self) -> Result<Option<VipGuard>, BpfError> {
        let raw = self
            .config
            .get(&0, 0)
            .map_err(|e| self.map_error("reading the guard", CONFIG, e))?;
        Ok(raw.guarded().map(|(vip, ports)| VipGuard { vip, ports }))
    }

    /// Takes the parked-frame ring. There is one consumer: a second call fails.
    pub fn parked(&mut self) -> Result<ParkedRing, BpfError> {
        let ring = self.ring.take().ok_or_else(|| BpfError::RingTaken {
            iface: self.iface.clone(),
        })?;
        Ok(ParkedRing {
            ring,
            poll_fd: self.ring_fd.take(),
            malformed: 0,
        })
    }

    /// CLOCK_MONOTONIC in nanoseconds, the clock of [`FlowEntry::last_seen_ns`].
    pub fn now_ns() -> u64 {
        abi::monotonic_ns()
    }

    /// Runs the program on `frame` `repeat` times (at least once) with
    /// `BPF_PROG_TEST_RUN`, against the live maps. A redirect is only
    /// reported, not carried out. Parked copies do go into the ring.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRun, BpfError> {
        let program = self.program()?;
        let fd = program
            .fd()
            .map_err(|e| self.program_error("getting the program fd", e))?;
        let raw =
            abi::prog_test_run(fd.as_fd(), frame, repeat).map_err(|source| BpfError::Sys {
                iface: self.iface.clone(),
                step: "BPF_PROG_TEST_RUN",
                source,
            })?;
        Ok(TestRun {
            verdict: Verdict::from(raw.retval),
            frame: raw.data_out,
            duration_ns: raw.duration_ns,
        })
    }

    fn load_for(
        iface: &str,
        pins: Option<&Path>,
        guard: Option<&VipGuard>,
    ) -> Result<Self, BpfError> {
        // Checked before anything is loaded.
        let guard = config_value(iface, guard)?;
        let cpus = aya::util::nr_cpus()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| BpfError::Sys {
                iface: iface.to_owned(),
                step: "reading the number of possible CPUs",
                source: io::Error::other("/sys/devices/system/cpu/possible unreadable"),
            })?;
        let mut loader = EbpfLoader::new();
        loader.set_max_entries(SCRATCH, cpus);
        let object = match pins {
            Some(dir) => {
                loader.map_pin_path(dir);
                OBJECT_PINNED
            }
            None => OBJECT,
        };
        let mut ebpf = loader.load(object).map_err(|e| BpfError::LoadObject {
            iface: iface.to_owned(),
            source: Box::new(e),
        })?;
        let missing = |what, name| BpfError::Missing {
            iface: iface.to_owned(),
            what,
            name,
        };
        let program_error = |step, e| BpfError::Program {
            iface: iface.to_owned(),
            step,
            source: Box::new(e),
        };
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| missing("program", PROGRAM))?
            .try_into()
            .map_err(|e| program_error("checking the program type", e))?;
        program
            .load()
            .map_err(|e| program_error("loading btcp_ingress (verifier)", e))?;

        let map_error = |step, map, e| BpfError::Map {
            iface: iface.to_owned(),
            step,
            map,
            source: Box::new(e),
        };
        let flows = ebpf.take_map(FLOWS).ok_or_else(|| missing("map", FLOWS))?;
        let flows = HashMap::try_from(flows).map_err(|e| map_error("opening", FLOWS, e))?;
        let stats = ebpf.take_map(STATS).ok_or_else(|| missing("map", STATS))?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| map_error("opening", STATS, e))?;
        let ring = ebpf
            .take_map(PARKED)
            .ok_or_else(|| missing("map", PARKED))?;
        // A second descriptor of the ring, owned, for pollers (tokio's
        // AsyncFd) that must own what they register.
        let ring_fd = match &ring {
            aya::maps::Map::RingBuf(data) => data.fd().as_fd().try_clone_to_owned().ok(),
            _ => None,
        };
        let ring = RingBuf::try_from(ring).map_err(|e| map_error("opening", PARKED, e))?;
        let config = ebpf
            .take_map(CONFIG)
            .ok_or_else(|| missing("map", CONFIG))?;
        let mut config: Array<MapData, RawConfig> =
            Array::try_from(config).map_err(|e| map_error("opening", CONFIG, e))?;
        // Before the program is attached (or replaces a pinned one).
        config
            .set(0, guard, 0)
            .map_err(|e| map_error("writing the guard", CONFIG, e))?;

        Ok(Self {
            iface: iface.to_owned(),
            mode: None,
            pins: None,
            link: None,
            adoption: Adoption::Fresh,
            flows,
            stats,
            config,
            ring: Some(ring),
            ring_fd,
            ebpf,
        })
    }

    fn attach_as(
        &mut self,
        mode: AttachMode,
    ) -> Result<Option<tc::SchedClassifierLinkId>, BpfError> {
        let iface = self.iface.clone();
        let attach_error =
            |step: &str, source: Box<dyn std::error::Error + Send + Sync>| BpfError::Attach {
                iface: iface.clone(),
                step: step.to_owned(),
                source,
            };
        let program = self.program_mut()?;
        match mode {
            AttachMode::Tcx => {
                // First: a handed-off flow must be steered before any other program can answer it.
                let options = TcAttachOptions::TcxOrder(LinkOrder::first());
                let id = program
                    .attach_with_options(&iface, TcAttachType::Ingress, options)
                    .map_err(|e| attach_error("TCX link", Box::new(e)))?;
                self.mode = Some(mode);
                return Ok(Some(id));
            }
            AttachMode::Clsact => {
                if let Err(e) = tc::qdisc_add_clsact(&iface) {
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(attach_error("adding the clsact qdisc", Box::new(e)));
                    }
                }
                let options = TcAttachOptions::Netlink(NlOptions::default());
                program
                    .attach_with_options(&iface, TcAttachType::Ingress, options)
                    .map_err(|e| attach_error("clsact filter", Box::new(e)))?;
            }
        }
        self.mode = Some(mode);
        Ok(None)
    }

    /// One system call: a handoff's steps must not wait on the map more
    /// than they have to, so the per-flow counters restart with each write
    /// rather than being read back and carried over.
    fn write_entry(&mut self, key: &FlowKey, mut value: RawFlowVal) -> Result<(), BpfError> {
        // Ageing starts now, not at the first packet, which may never come.
        value.last_seen_ns = Self::now_ns();
        self.flows
            .insert(RawFlowKey::from(key), value, 0)
            .map_err(|e| self.map_error("writing an entry", FLOWS, e))
    }

    fn program(&self) -> Result<&SchedClassifier, BpfError> {
        let program = self
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| BpfError::Missing {
                iface: self.iface.clone(),
                what: "program",
                name: PROGRAM,
            })?;
        program
            .try_into()
            .map_err(|e| self.program_error("checking the program type", e))
    }

    fn program_mut(&mut self) -> Result<&mut SchedClassifier, BpfError> {
        let iface = self.iface.clone();
        let program = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| BpfError::Missing {
                iface: iface.clone(),
                what: "program",
                name: PROGRAM,
            })?;
        program.try_into().map_err(|e| BpfError::Program {
            iface,
            step: "checking the program type",
            source: Box::new(e),
        })
    }

    fn program_error(&self, step: &'static str, e: aya::programs::ProgramError) -> BpfError {
        BpfError::Program {
            iface: self.iface.clone(),
            step,
            source: Box::new(e),
        }
    }

    fn map_error(&self, step: &'static str, map: &'static str, e: MapError) -> BpfError {
        BpfError::Map {
            iface: self.iface.clone(),
            step,
            map,
            source: Box::new(e),
        }
    }
}

/// The CONFIG value for `guard`, checked: a guard that names no address or
/// no port would silently guard nothing, or everything.
fn config_value(iface: &str, guard: Option<&VipGuard>) -> Result<RawConfig, BpfError> {
    let Some(guard) = guard else {
        return Ok(RawConfig::default());
    };
    let invalid = |reason| BpfError::InvalidGuard {
        iface: iface.to_owned(),
        reason,
    };
    if guard.vip.is_unspecified() || guard.vip.is_broadcast() || guard.vip.is_multicast() {
        return Err(invalid("the VIP is not a unicast address"));
    }
    const _: () = assert!(abi::MAX_SERVICE_PORTS == 4, "the message below says 4");
    if guard.ports.is_empty() || guard.ports.len() > abi::MAX_SERVICE_PORTS as usize {
        return Err(invalid("1 to 4 service ports are needed"));
    }
    if guard.ports.contains(&0) {
        return Err(invalid("port 0 is not a service port"));
    }
    Ok(RawConfig::guarding(guard.vip, &guard.ports))
}

/// Makes `root/<iface>/v<ABI>` on a bpf filesystem and checks what is
/// pinned there before anything is loaded: aya opens an existing pin
/// without comparing it with the program's definition.
fn prepare_pin_dir(iface: &str, root: &Path) -> Result<PathBuf, BpfError> {
    let sys = |step: &'static str| {
        move |source: io::Error| BpfError::Sys {
            iface: iface.to_owned(),
            step,
            source,
        }
    };
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Err(BpfError::Sys {
            iface: iface.to_owned(),
            step: "naming the pin directory",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"),
        });
    }
    if !on_bpffs(root).map_err(sys("checking the pin directory's filesystem"))? {
        return Err(BpfError::NotBpffs {
            iface: iface.to_owned(),
            dir: root.display().to_string(),
        });
    }
    let iface_dir = root.join(iface);
    let version = format!("v{}", abi::ABI_VERSION);
    if let Ok(entries) = std::fs::read_dir(&iface_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != version {
                return Err(BpfError::OtherAbi {
                    iface: iface.to_owned(),
                    dir: iface_dir.display().to_string(),
                    found: name.trim_start_matches('v').to_owned(),
                    expected: abi::ABI_VERSION,
                });
            }
        }
    }
    let dir = iface_dir.join(version);
    std::fs::create_dir_all(&dir).map_err(sys("making the pin directory"))?;
    for (name, expected) in expected_maps() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| BpfError::Map {
            iface: iface.to_owned(),
            step: "reading a pinned map's info",
            map: name,
            source: Box::new(e),
        })?;
        let found = Layout {
            kind: info.map_type().ok(),
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
        };
        if found != expected {
            return Err(BpfError::PinMismatch {
                iface: iface.to_owned(),
                path: path.display().to_string(),
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(dir)
}

/// A map's type and sizes, as compared with a pinned one.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Layout {
    kind: Option<MapType>,
    key: u32,
    value: u32,
    entries: u32,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{kind:?}")?,
            None => f.write_str("an unknown type")?,
        }
        write!(
            f,
            " with {}-byte keys, {}-byte values, {} entries",
            self.key, self.value, self.entries
        )
    }
}

/// The pinned maps of this ABI and their layouts.
fn expected_maps() -> [(&'static str, Layout); 2] {
    [
        (
            FLOWS,
            Layout {
                kind: Some(MapType::Hash),
                key: abi::SIZEOF_FLOW_KEY,
                value: abi::SIZEOF_FLOW_VAL,
                entries: abi::MAX_FLOWS,
            },
        ),
        (
            STATS,
            Layout {
                kind: Some(MapType::PerCpuArray),
                key: 4,
                value: 8,
                entries: abi::STAT_COUNT,
            },
        ),
    ]
}

/// Whether pins made under `path` would be on a bpf filesystem: the
/// nearest existing ancestor decides (creating directories on a plain
/// filesystem first would leave junk behind an error).
pub fn on_bpffs(path: &Path) -> io::Result<bool> {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    Ok(abi::statfs_type(&probe)? == BPF_FS_MAGIC)
}
