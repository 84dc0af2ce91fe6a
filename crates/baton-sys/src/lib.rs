//! baton-sys
