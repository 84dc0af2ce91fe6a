//! baton-serve
