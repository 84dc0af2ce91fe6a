//! Privileged tests against the real kernel (run as root): `BPF_PROG_TEST_RUN`
//! fixtures, and attach/detach in network namespaces the tests create.

mod fixtures;
mod netns;
