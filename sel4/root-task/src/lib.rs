//! The root task's pure parts, shared with `splitvisor` (which refuses an
//! image before it boots Bochs) and tested on the host.
#![cfg_attr(not(test), no_std)]

pub mod rights;
