//! A global allocator that meters one script call and stops the process before it allocates
//! past the call's heap limit.
//!
//! Starlark checks its own heap only every thousand ticks and does not count what its values keep
//! on the Rust heap (dicts, and the buffers `*`, `join` and `replace` build), so one statement
//! can allocate gigabytes between two checks. Rust has no stable way to fail an allocation
//! without aborting, so the bound is enforced where ending the process is the right answer: in
//! the script host ([`super::host`]), a child process that runs nothing but script calls. There,
//! [`arm`] starts counting the bytes the call holds; a request that would take the count past
//! the limit ends the host at once with [`MEMORY_EXIT_CODE`], before the memory is taken, and the
//! parent reports `script stopped: memory limit of N bytes exceeded` and starts a fresh host.
//!
//! Unarmed, the allocator is the system allocator plus one relaxed atomic load per call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The exit status of a script host stopped by the memory limit.
pub const MEMORY_EXIT_CODE: i32 = 86;

static ARMED: AtomicBool = AtomicBool::new(false);
static USED: AtomicIsize = AtomicIsize::new(0);
static LIMIT: AtomicIsize = AtomicIsize::new(isize::MAX);

/// The system allocator, metered while a script call is armed. Install it with
/// `#[global_allocator]` in a binary that hosts scripts.
pub struct Metered;

/// Start counting: from now on, holding more than `limit` bytes more than now ends the process.
/// Only the script host arms the meter; it runs one call at a time.
pub fn arm(limit: usize) {
    USED.store(0, Ordering::SeqCst);
    LIMIT.store(limit.min(isize::MAX as usize) as isize, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Net bytes allocated since [`arm`] (while armed).
pub fn used() -> isize {
    USED.load(Ordering::SeqCst)
}

/// Stop counting.
pub fn disarm() {
    ARMED.store(false, Ordering::SeqCst);
}

#[inline]
fn grow(bytes: usize) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let bytes = bytes.min(isize::MAX as usize) as isize;
    let before = USED.fetch_add(bytes, Ordering::Relaxed);
    if before.saturating_add(bytes) > LIMIT.load(Ordering::Relaxed) {
        // Nothing here may allocate or unwind: leave now, before the memory is taken.
        unsafe { libc::_exit(MEMORY_EXIT_CODE) }
    }
}

#[inline]
fn shrink(bytes: usize) {
    if ARMED.load(Ordering::Relaxed) {
        USED.fetch_sub(bytes.min(isize::MAX as usize) as isize, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        }
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < layout.size() && !out.is_null() {
            shrink(layout.size() - new_size);
        }
        out
    }
}
