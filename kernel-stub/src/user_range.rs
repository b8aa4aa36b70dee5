//! The first check of a pointer and length a server passes to the stub:
//! the range must lie in the lower canonical half, where ring-3 mappings
//! live, without wrapping. Only then does the stub walk the caller's page
//! tables (`memory::user_range_ok`), which look at bits 12-47 alone: a
//! non-canonical pointer such as `(1 << 60) | 0x4000_0000` would otherwise
//! pass the walk and fault the stub with #GP.

use ipc_proto::ErrorCode;

/// The end of the lower canonical half (48-bit addresses).
pub const USER_END: u64 = 1 << 47;

/// `[ptr, ptr + len)` if `len` is at most `max` and the range is inside
/// the lower canonical half; `None` for an empty range (nothing to touch,
/// whatever `ptr` is).
pub fn check(ptr: u64, len: u64, max: u64) -> Result<Option<(u64, u64)>, ErrorCode> {
    if len > max {
        return Err(ErrorCode::TooLong);
    }
    if len == 0 {
        return Ok(None);
    }
    match ptr.checked_add(len) {
        Some(end) if end <= USER_END => Ok(Some((ptr, end))),
        _ => Err(ErrorCode::BadPointer),
    }
}

/// A range of a server's memory the stub checked: inside the lower
/// canonical half, not empty, at most the call's limit, and mapped for
/// ring 3 in the caller's address space (writable if it was asked for).
/// Only [`UserSlice::check`] builds one, so a pointer argument cannot reach
/// a slice without the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserSlice {
    addr: u64,
    len: u64,
}

impl UserSlice {
    /// Checks `[ptr, ptr + len)` with [`check`], then asks `mapped(start,
    /// len, write)` (the walk of the caller's page tables); `None` for an
    /// empty range.
    pub fn check(
        ptr: u64,
        len: u64,
        max: u64,
        write: bool,
        mapped: impl FnOnce(u64, u64, bool) -> bool,
    ) -> Result<Option<Self>, ErrorCode> {
        let Some((start, end)) = check(ptr, len, max)? else {
            return Ok(None);
        };
        if !mapped(start, end - start, write) {
            return Err(ErrorCode::BadPointer);
        }
        Ok(Some(Self {
            addr: start,
            len: end - start,
        }))
    }

    /// The first byte's address in the caller's address space.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length in bytes (at most the call's limit).
    #[allow(clippy::len_without_is_empty, reason = "never empty")]
    pub fn len(&self) -> usize {
        crate::usize_from(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_in_the_lower_half_pass() {
        assert_eq!(
            check(0x4000_0000, 16, 4096),
            Ok(Some((0x4000_0000, 0x4000_0010)))
        );
        assert_eq!(
            check(USER_END - 1, 1, 4096),
            Ok(Some((USER_END - 1, USER_END)))
        );
    }

    /// Finding 4 and 10: non-canonical pointers, wrapping lengths and the
    /// null pointer with length 0 never reach the page walk or a slice.
    #[test]
    fn hostile_ranges_are_refused() {
        assert_eq!(
            check((1 << 60) | 0x4000_0000, 1, 4096),
            Err(ErrorCode::BadPointer)
        );
        assert_eq!(check(USER_END - 1, 2, 4096), Err(ErrorCode::BadPointer));
        assert_eq!(
            check(0xffff_8000_0000_0000, 1, 4096),
            Err(ErrorCode::BadPointer)
        );
        assert_eq!(check(u64::MAX, 1, 4096), Err(ErrorCode::BadPointer));
        assert_eq!(check(0x4000_0000, 4097, 4096), Err(ErrorCode::TooLong));
        assert_eq!(check(0, 0, 4096), Ok(None));
        assert_eq!(check(u64::MAX, 0, 4096), Ok(None));
    }

    #[test]
    fn a_user_slice_needs_the_page_walk_too() {
        let walk = |ok| move |_, _, _| ok;
        assert_eq!(
            UserSlice::check(0x4000_0000, 8, 4096, false, walk(false)),
            Err(ErrorCode::BadPointer)
        );
        let s = UserSlice::check(0x4000_0000, 8, 4096, true, walk(true))
            .unwrap()
            .unwrap();
        assert_eq!((s.addr(), s.len()), (0x4000_0000, 8));
        assert_eq!(UserSlice::check(0, 0, 4096, true, walk(false)), Ok(None));
        let never = |_, _, _| -> bool { panic!("a non-canonical range reached the walk") };
        assert_eq!(
            UserSlice::check(1 << 60, 1, 4096, false, never),
            Err(ErrorCode::BadPointer)
        );
    }

    proptest! {
        #[test]
        fn accepted_ranges_are_canonical_and_bounded(ptr in any::<u64>(), len in 0u64..8192) {
            if let Ok(Some((start, end))) = check(ptr, len, 4096) {
                prop_assert!(start < end && end <= USER_END && end - start <= 4096);
            }
        }
    }
}
