//! The mmu-server: guest page-table walker, shadow-table cache and nested-paging map (to come; see issue 3).
#![no_std]
