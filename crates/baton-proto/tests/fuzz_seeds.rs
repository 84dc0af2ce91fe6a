//! The fuzz targets' seed corpora (`fuzz/corpus/*` at the repository root)
//! are generated from the codec, so they must follow it when the wire format
//! changes. Regenerate with
//! `cargo test -p baton-proto --test fuzz_seeds -- --ignored`.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use baton_proto::auth::{EphemeralKey, FrontHandshake, Psk};
use baton_proto::{
    FlowKey, Frame, FrameLimits, Handoff, LoadReport, MirrorFlow, RepairWindow, TcpState,
};
use bytes::{Bytes, BytesMut};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&FrameLimits::default(), &mut out)
            .expect("seed frames fit");
    }
    out.to_vec()
}

fn frame_seeds() -> Seeds {
    let flow = FlowKey {
        client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 51234),
        vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80),
    };
    let handoff = Frame::Handoff(Handoff {
        id: 1,
        flow,
        state: TcpState {
            snd_seq: 0x1000_0001,
            rcv_seq: 0x2000_0040,
            mss: 1460,
            wscale_ok: true,
            snd_wscale: 7,
            rcv_wscale: 7,
            timestamps_ok: true,
            sack_ok: true,
            ts_val: 987_654,
            window: RepairWindow {
                snd_wl1: 0x2000_0001,
                snd_wnd: 502,
                max_window: 502,
                rcv_wnd: 512,
                rcv_wup: 0x2000_0040,
            },
        },
        data: Bytes::from_static(b"GET /index.html HTTP/1.1\r\nHost: baton.test\r\n\r\n"),
        sent: Bytes::new(),
        tls: Bytes::new(),
        hint: Bytes::from_static(b"/index.html"),
    });
    let mirrored = MirrorFlow {
        origin: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 102)),
        id: 0x1234_5678,
        flow,
        hint: Bytes::from_static(b"/index.html"),
    };
    let (_, hello) = FrontHandshake::start(
        Psk::new([7u8; 32]).expect("long enough"),
        EphemeralKey::from_bytes([1; 32]),
    );
    vec![
        ("handoff", encode(&[handoff])),
        (
            "live_holding",
            encode(&[
                Frame::Live {
                    id: 1,
                    restore_us: 12,
                },
                Frame::Holding {
                    ids: vec![1, 7],
                    done: true,
                },
            ]),
        ),
        (
            "refused",
            encode(&[Frame::Refused {
                id: 2,
                reason: "restore failed: EADDRINUSE".into(),
                backend_fault: false,
            }]),
        ),
        (
            "closed_abort",
            encode(&[Frame::Closed { id: 1, flow }, Frame::Abort { id: 3 }]),
        ),
        (
            "load_ping_pong",
            encode(&[
                Frame::Load(LoadReport {
                    active: 3,
                    total: 99,
                }),
                Frame::Ping { nonce: 5 },
                Frame::Pong { nonce: 5 },
            ]),
        ),
        (
            "goodbye",
            encode(&[Frame::Goodbye {
                reason: "draining".into(),
            }]),
        ),
        (
            "mirror_unmirror",
            encode(&[
                Frame::Mirror {
                    flows: vec![mirrored.clone()],
                },
                Frame::Unmirror {
                    flows: vec![mirrored.as_ref()],
                },
            ]),
        ),
        (
            "mirroring",
            encode(&[
                Frame::Holding {
                    ids: vec![],
                    done: true,
                },
                Frame::Mirroring {
                    flows: vec![mirrored],
                    done: true,
                },
            ]),
        ),
        ("hello", hello),
    ]
}

fn http_seeds() -> Seeds {
    let heads: [(&str, &str); 6] = [
        ("get", "GET /index.html HTTP/1.1\r\nHost: baton.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"),
        ("post_length", "POST /upload HTTP/1.1\r\nHost: baton.test:8080\r\nContent-Length: 5\r\n\r\nhello"),
        ("post_chunked", "POST /api HTTP/1.1\r\nHost: baton.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("absolute", "GET http://Baton.Test/a?b=c HTTP/1.1\r\nHost: baton.test\r\nConnection: close\r\n\r\n"),
        ("http10", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ("pipelined", "GET /a HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    heads
        .into_iter()
        .map(|(name, raw)| (name, raw.as_bytes().to_vec()))
        .collect()
}

/// Edit lists for `channel_auth`: which message (0 hello, 1 challenge,
/// 2 proof, 3 sealed stream), then edits of (op, position u16, value); ops
/// 0 flip, 1 insert, 2 delete, 3 truncate, 4 replay a prefix.
fn channel_seeds() -> Seeds {
    vec![
        ("hello_untouched", vec![0]),
        ("hello_flip_key", vec![0, 0, 0, 12, 0x40]),
        ("challenge_flip_proof", vec![1, 0, 0, 50, 0x01]),
        ("challenge_truncate", vec![1, 3, 0, 40, 0]),
        ("proof_insert", vec![2, 1, 0, 5, 0x82]),
        ("stream_untouched", vec![3]),
        ("stream_flip_second", vec![3, 0, 0, 40, 0x80]),
        ("stream_replay_first", vec![3, 2, 0, 0, 0, 4, 0, 29, 0]),
        ("stream_delete_tag", vec![3, 2, 0, 28, 0]),
    ]
}

/// (file name, contents) of each seed of one fuzz target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn all_seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("frame_decode", frame_seeds()),
        ("http_head", http_seeds()),
        ("channel_auth", channel_seeds()),
    ]
}

#[test]
fn fuzz_seed_corpora_match_the_current_codec() {
    for (target, seeds) in all_seeds() {
        for (name, bytes) in seeds {
            let path = corpus_dir(target).join(name);
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; regenerate with `cargo test -p baton-proto --test fuzz_seeds -- --ignored`", path.display())
            });
            assert!(
                on_disk == bytes,
                "{} is stale; regenerate (see module doc)",
                path.display()
            );
        }
    }
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus; run on purpose"]
fn write_fuzz_seeds() {
    for (target, seeds) in all_seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
}
