//! baton-bpf
