//! `baton lab up --tls`: a throwaway certificate authority and a server
//! certificate for the lab's host name and VIP, made fresh for every lab and
//! removed with it. The CA's key is not kept: nothing else can be signed
//! with it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::LabError;

/// The host name the lab's certificate is for (`.test` is reserved for
/// testing, RFC 2606: it never resolves on a real network).
pub const SERVER_NAME: &str = "baton.test";

/// The files `make` writes into the lab directory.
#[derive(Debug, Clone)]
pub(crate) struct LabCerts {
    /// The CA certificate clients trust (`curl --cacert`).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA).
    pub chain: PathBuf,
    /// The server's private key (mode 0600).
    pub key: PathBuf,
}

fn cert_err(what: &str, e: rcgen::Error) -> LabError {
    LabError::InvalidSpec(format!("making the lab's {what}: {e}"))
}

/// Makes a CA and a server certificate for [`SERVER_NAME`] and `vip`,
/// valid from a day ago for 30 days.
pub(crate) fn make(dir: &Path, vip: Ipv4Addr) -> Result<LabCerts, LabError> {
    let now = time_now();
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Baton lab CA (throwaway)");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // From a day ago (clocks of the lab's hosts are the same, but a client's
    // may not be), for 30 days: labs are short-lived.
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(30);
    let ca_key = KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| cert_err("CA", e))?;

    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| cert_err("certificate", e))?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(vip)));
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = ca_params.not_before;
    params.not_after = ca_params.not_after;
    let key = KeyPair::generate().map_err(|e| cert_err("server key", e))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| cert_err("certificate", e))?;

    let files = LabCerts {
        ca: dir.join("ca.pem"),
        chain: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    crate::write_file(&files.ca, &ca_cert.pem())?;
    crate::write_file(&files.chain, &format!("{}{}", cert.pem(), ca_cert.pem()))?;
    crate::write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
