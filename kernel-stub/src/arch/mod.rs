//! The virtualization extensions the stub can enter a guest with.
//! Each back end turns its exits into the same `ipc_proto::ExitRecord`.

pub mod svm;
