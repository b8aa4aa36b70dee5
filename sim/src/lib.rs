//! A deterministic software platform that implements the stub ABI on the host (to come; see issue 3).
