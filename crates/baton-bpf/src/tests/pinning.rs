//! Pinned maps and link: what a front restart relies on, against a bpffs the
//! test mounts and removes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::tc::{SchedClassifier, TcAttachType};
use baton_proto::FlowKey;

use super::netns::{run, Lab, FRONT_IF, FRONT_MAC};
use super::owner;
use crate::frame::tests::{tcp_frame, BACK_MAC};
use crate::{Action, Adoption, BpfError, ForwardTarget, Forwarder, Verdict};

/// A bpf filesystem mounted for one test; unmounted and removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/run/baton/bpftest-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("making the mount point");
        let fs = Bpffs(dir);
        run(&["mount", "-t", "bpf", "bpf", &fs.0.to_string_lossy()]);
        fs
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        if std::fs::remove_dir(&self.0).is_err() {
            eprintln!("warning: could not remove {}", self.0.display());
        }
    }
}

fn key() -> FlowKey {
    // The 4-tuple of `tcp_frame`.
    FlowKey {
        client: "198.18.0.2:40000".parse().expect("literal"),
        vip: "198.18.0.100:80".parse().expect("literal"),
    }
}

fn attached() -> Vec<u32> {
    let (_, programs) =
        SchedClassifier::query_tcx(FRONT_IF, TcAttachType::Ingress).expect("query tcx");
    programs.iter().map(|p| p.id()).collect()
}

#[test]
fn pinned_flows_and_link_outlive_the_process_and_the_next_forwarder_adopts_them() {
    let lab = Lab::new("pin");
    let fs = Bpffs::new();
    let ifindex = lab.front_ifindex();
    lab.run(|sw| {
        sw.front();
        let target = ForwardTarget {
            ifindex,
            dst_mac: BACK_MAC,
            src_mac: FRONT_MAC,
        };
        let mut first = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect("attach pinned");
        assert_eq!(first.adoption(), &Adoption::Fresh);
        let first_id = first.program_id().expect("program id");
        first.forward(&key(), &target, owner()).expect("forward");
        drop(first);
        // The process's handle is gone; the pinned link keeps the program on the NIC.
        assert_eq!(attached(), vec![first_id], "still steering after the drop");

        let second = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect("attach again");
        assert_eq!(second.adoption(), &Adoption::Adopted);
        let second_id = second.program_id().expect("program id");
        assert_ne!(second_id, first_id);
        assert_eq!(
            attached(),
            vec![second_id],
            "the new program replaced the old one"
        );
        let entry = second
            .entry(&key())
            .expect("lookup")
            .expect("the entry survived");
        assert_eq!(entry.action, Action::Forward);
        assert_eq!(entry.owner, owner());
        assert_eq!(entry.target, Some(target));
        // The new program reads the adopted map.
        let verdict = second
            .test_run(&tcp_frame(b"x", 0, 0), 1)
            .expect("test run");
        assert_eq!(verdict.verdict, Verdict::Redirect);
        drop(second);

        let removed = Forwarder::unpin(FRONT_IF, fs.path()).expect("unpin");
        assert_eq!(removed.len(), 1, "{removed:?}");
        // The kernel releases an unpinned link from deferred work: poll.
        let t = std::time::Instant::now();
        while !attached().is_empty() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(attached().is_empty(), "unpin detaches the program");
        assert!(!fs.path().join(FRONT_IF).exists());
        assert!(Forwarder::unpin(FRONT_IF, fs.path())
            .expect("unpin again")
            .is_empty());
    });
}

#[test]
fn pins_of_another_abi_or_layout_are_refused_and_never_read() {
    let lab = Lab::new("abi");
    let fs = Bpffs::new();
    lab.run(|sw| {
        sw.front();
        // The previous version's directory beside ours (a front of the
        // previous release left its pins).
        let previous = crate::ABI_VERSION - 1;
        let other = fs.path().join(FRONT_IF).join(format!("v{previous}"));
        std::fs::create_dir_all(&other).expect("mkdir on bpffs");
        let err = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect_err("another ABI");
        assert!(matches!(err, BpfError::OtherAbi { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("baton unpin"), "{err}");
        assert!(
            text.contains(&format!("ABI v{previous}"))
                && text.contains(&format!("speaks v{}", crate::ABI_VERSION)),
            "{err}"
        );
        assert!(attached().is_empty(), "nothing attached");
        std::fs::remove_dir(&other).expect("rmdir");

        // A map of another layout where FLOWS should be (here: a STATS array).
        let dir = fs
            .path()
            .join(FRONT_IF)
            .join(format!("v{}", crate::ABI_VERSION));
        std::fs::create_dir_all(&dir).expect("mkdir on bpffs");
        {
            let cpus = aya::util::nr_cpus().expect("cpus") as u32;
            let ebpf = aya::EbpfLoader::new()
                .set_max_entries("SCRATCH", cpus)
                .load(crate::forwarder::OBJECT)
                .expect("load");
            ebpf.map("STATS")
                .expect("STATS")
                .pin(dir.join("FLOWS"))
                .expect("pin");
        }
        let err = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect_err("wrong layout");
        assert!(matches!(err, BpfError::PinMismatch { .. }), "{err}");
        assert!(err.to_string().contains("PerCpuArray"), "{err}");
        assert!(attached().is_empty(), "nothing attached");
        Forwarder::unpin(FRONT_IF, fs.path()).expect("unpin");
    });
}

#[test]
fn a_directory_off_bpffs_is_a_clear_error_and_creates_nothing() {
    let dir = std::env::temp_dir().join(format!("baton-not-bpffs-{}", std::process::id()));
    let err = Forwarder::attach_pinned("lo", &dir).expect_err("tmpfs is not bpffs");
    assert!(matches!(err, BpfError::NotBpffs { .. }), "{err}");
    assert!(err.to_string().contains("mount -t bpf"), "{err}");
    assert!(!dir.exists(), "no directory left behind");
}

#[test]
fn each_forwarder_has_a_ring_of_its_own_that_starts_consistent() {
    let lab = Lab::new("ring");
    let fs = Bpffs::new();
    lab.run(|sw| {
        sw.front();
        let frame = tcp_frame(b"one", 0, 0);
        let mut first = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect("attach pinned");
        let mut first_ring = first.parked().expect("ring");
        first.park(&key(), owner()).expect("park");
        first.test_run(&frame, 2).expect("run");
        drop(first);
        let mut second = Forwarder::attach_pinned(FRONT_IF, fs.path()).expect("attach again");
        let mut ring = second.parked().expect("ring");
        assert!(ring.next().is_none(), "a new ring: nothing stale is read");
        // The adopted PARK entry parks into the new program's ring.
        second.test_run(&frame, 3).expect("run");
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
            assert!(n <= 3, "read more records than were written");
        }
        assert_eq!(n, 3);
        let mut old = 0;
        while first_ring.next().is_some() {
            old += 1;
        }
        assert_eq!(old, 2, "the old ring kept only the old program's frames");
        drop(second);
        Forwarder::unpin(FRONT_IF, fs.path()).expect("unpin");
    });
}
