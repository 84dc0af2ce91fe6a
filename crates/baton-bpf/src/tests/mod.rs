//! Privileged tests against the real kernel (run as root): `BPF_PROG_TEST_RUN`
//! fixtures, and attach/detach in network namespaces the tests create.

mod fixtures;
mod netns;
mod pinning;
mod unknown;

/// The owner written with every test entry.
fn owner() -> crate::Owner {
    crate::Owner {
        backend: std::net::Ipv4Addr::new(198, 18, 0, 11),
        id: 0x0123_4567_89ab_cdef,
    }
}
