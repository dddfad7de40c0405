//! Thin wrappers over system calls. Every `unsafe` block of the core lives here.

pub mod clock;
pub mod net;
pub mod thread;
