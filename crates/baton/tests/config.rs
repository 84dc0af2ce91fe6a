//! `baton check`: valid configurations pass, broken ones fail with a message
//! that names the problem. Only the lab case needs root.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs `baton check FILE`; returns (success, stdout + stderr).
fn check(file: &Path) -> (bool, String) {
    let out = Command::new(baton())
        .arg("check")
        .arg(file)
        .output()
        .expect("running baton check");
    outcome(&out)
}

/// The configurations `baton lab up` writes pass.
#[test]
fn lab_configs_pass_check() {
    let lab = up(2, None, None);
    for host in ["front", "back1", "back2"] {
        let cfg = config_of(&lab, host);
        let (ok, text) = check(&cfg);
        assert!(ok, "baton check {} failed: {text}", cfg.display());
        let kind = if host == "front" {
            "valid front-end configuration"
        } else {
            "valid back-end configuration"
        };
        assert!(text.contains(kind), "baton check {}: {text}", cfg.display());
    }
    finish(lab);
}

fn front_toml(key: &Path, extra_top: &str, backends: &str) -> String {
    format!(
        "vip = \"198.18.0.100\"\nport = 80\ninterface = \"eth0\"\nkey_file = \"{}\"\n{extra_top}{backends}",
        key.display()
    )
}

const BACKENDS: &str = "\n[[backend]]\nname = \"back1\"\ncontrol = \"198.18.0.11:7070\"\n";

fn back_toml(key: &Path, docroot: &Path, extra: &str) -> String {
    format!(
        "control_listen = \"198.18.0.11:7070\"\nvip = \"198.18.0.100\"\ndocroot = \"{}\"\nkey_file = \"{}\"\n{extra}",
        docroot.display(),
        key.display()
    )
}

/// Broken files fail with exit != 0 and a message naming the problem; the
/// same files with the problem fixed pass.
#[test]
fn broken_configs_fail_check_with_a_reason() {
    let tmp = TempDir::new("e2e-check").expect("temp dir");
    let dir = &tmp.0;
    let key = dir.join("key.hex");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .expect("key");
    let short = dir.join("short.hex");
    std::fs::write(&short, "0123456789\n").expect("short key");
    let missing = dir.join("no-such-key");
    let docroot = dir.join("docroot");
    std::fs::create_dir(&docroot).expect("docroot");

    let good = [
        ("good-front.toml", front_toml(&key, "", BACKENDS)),
        ("good-back.toml", back_toml(&key, &docroot, "")),
    ];
    for (name, text) in &good {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        let (ok, out) = check(&path);
        assert!(ok, "{name} should pass: {out}\n{text}");
    }

    let bad: &[(&str, String, &[&str])] = &[
        (
            "front: unknown key",
            front_toml(&key, "colour = \"red\"\n", BACKENDS),
            &["colour"],
        ),
        (
            "front: unknown key in a table",
            front_toml(&key, "[limits]\nhead_timeout = 5\n", BACKENDS),
            &["head_timeout"],
        ),
        ("front: no backend", front_toml(&key, "", ""), &["backend"]),
        (
            "front: bad backend address",
            front_toml(
                &key,
                "",
                "\n[[backend]]\nname = \"back1\"\ncontrol = \"198.18.0.11\"\n",
            ),
            &["control", "address"],
        ),
        (
            "front: bad vip",
            front_toml(&key, "", BACKENDS).replace("198.18.0.100", "198.18.0.300"),
            &["vip", "address"],
        ),
        (
            "front: missing key file",
            front_toml(&missing, "", BACKENDS),
            &["no-such-key"],
        ),
        (
            "front: key too short",
            front_toml(&short, "", BACKENDS),
            &["short.hex", "16"],
        ),
        (
            "front: duplicate backend",
            front_toml(&key, "", &format!("{BACKENDS}{BACKENDS}")),
            &["back1", "twice"],
        ),
        (
            "back: unknown key",
            back_toml(&key, &docroot, "max_conns = 3\n"),
            &["max_conns"],
        ),
        (
            "back: bad control address",
            back_toml(&key, &docroot, "").replace("198.18.0.11:7070", "198.18.0.11"),
            &["control_listen", "address"],
        ),
        (
            "back: missing docroot",
            back_toml(&key, &dir.join("nowhere"), ""),
            &["nowhere"],
        ),
        (
            "back: missing key file",
            back_toml(&missing, &docroot, ""),
            &["no-such-key"],
        ),
        (
            "back: key too short",
            back_toml(&short, &docroot, ""),
            &["short.hex", "16"],
        ),
    ];
    let mut problems = Vec::new();
    for (i, (what, text, words)) in bad.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let (ok, out) = check(&path);
        if ok {
            problems.push(format!("{what}: passed\n{text}"));
        } else if let Some(w) = words.iter().find(|w| !out.contains(*w)) {
            problems.push(format!(
                "{what}: the message does not mention {w:?}: {}",
                out.trim()
            ));
        } else {
            eprintln!("{what}: {}", out.trim());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The example deployment in `deploy/example/` (one front, three
/// back-ends) is valid, with its docroot and key made to exist here.
#[test]
fn the_example_deployment_passes_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = dir.path().join("key");
    std::fs::write(&key, "ab".repeat(32)).expect("writing a key");
    let docroot = dir.path().join("www");
    std::fs::create_dir(&docroot).expect("a docroot");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/example");
    let mut backends = 0;
    for name in ["front.toml", "back1.toml", "back2.toml", "back3.toml"] {
        let text = std::fs::read_to_string(example.join(name))
            .expect("an example file")
            .replace("/etc/baton/key", &key.display().to_string())
            .replace("/srv/www", &docroot.display().to_string());
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("writing the copy");
        let (ok, said) = check(&file);
        assert!(ok, "{name}: {said}");
        if name == "front.toml" {
            assert!(said.contains("3 back-ends"), "{said}");
        } else {
            backends += 1;
        }
    }
    assert_eq!(backends, 3);
}

/// A certificate and key for `name`, valid from `from` to `to` (days from
/// now), as PEM files in `dir`.
fn cert_files(dir: &Path, tag: &str, name: &str, from: i64, to: i64) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let (c, k) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("cert file");
    std::fs::write(&k, key.serialize_pem()).expect("key file");
    (c.display().to_string(), k.display().to_string())
}

/// `[tls]`: every certificate is read, dated and matched with its key by
/// `baton check`, which names the file at fault; a good one is described.
#[test]
fn tls_certificates_are_checked_before_start() {
    let tmp = TempDir::new("e2e-check-tls").expect("temp dir");
    let dir = &tmp.0;
    let key = dir.join("key.hex");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .expect("key");
    let (good_c, good_k) = cert_files(dir, "good", "baton.test", -1, 30);
    let (old_c, old_k) = cert_files(dir, "old", "baton.test", -30, -1);
    let (soon_c, soon_k) = cert_files(dir, "soon", "baton.test", -1, 3);
    let (other_c, other_k) = cert_files(dir, "other", "other.test", -1, 30);
    let tls = |cert: &str, key: &str, sni: &str| {
        format!("\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{sni}")
    };
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        check(&path)
    };
    let (ok, out) = file(
        "good.toml",
        front_toml(&key, "", BACKENDS) + &tls(&good_c, &good_k, ""),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("HTTPS on 198.18.0.100:443") && out.contains("CN="),
        "{out}"
    );

    let (ok, out) = file(
        "soon.toml",
        front_toml(&key, "", BACKENDS) + &tls(&soon_c, &soon_k, ""),
    );
    assert!(
        ok && out.contains("warning") && out.contains("soon.pem"),
        "{out}"
    );

    let sni = |name: &str, c: &str, k: &str| {
        format!("[[tls.sni]]\nname = \"{name}\"\ncert = \"{c}\"\nkey = \"{k}\"\n")
    };
    let bad: Vec<(&str, String, &[&str])> = vec![
        ("expired", tls(&old_c, &old_k, ""), &["old.pem", "expired"]),
        (
            "not yet valid",
            {
                let (c, k) = cert_files(dir, "future", "baton.test", 2, 30);
                tls(&c, &k, "")
            },
            &["future.pem", "not valid before"],
        ),
        (
            "key of another certificate",
            tls(&good_c, &other_k, ""),
            &["good.pem", "other.key", "do not belong together"],
        ),
        (
            "missing file",
            tls(&dir.join("nope.pem").display().to_string(), &good_k, ""),
            &["nope.pem"],
        ),
        (
            "SNI name the certificate does not cover",
            tls(&good_c, &good_k, &sni("www.example", &other_c, &other_k)),
            &["www.example", "does not cover"],
        ),
        (
            "TLS port equal to the HTTP port",
            tls(&good_c, &good_k, "").replace("[tls]\n", "[tls]\nport = 80\n"),
            &["port"],
        ),
    ];
    for (what, t, needles) in bad {
        let (ok, out) = file("bad.toml", front_toml(&key, "", BACKENDS) + &t);
        assert!(!ok, "{what} should fail: {out}");
        for n in needles {
            assert!(
                out.contains(n),
                "{what}: the message should name {n:?}: {out}"
            );
        }
    }
}
