//! Device models: each a [`crate::VirtioDevice`] with its backend passed
//! in as a trait.

pub mod blk;
pub mod console;
pub mod net;
pub mod rng;
