//! Large read-only weight buffers: 64-byte lines on 2 MiB boundaries, in transparent huge
//! pages where the kernel gives them.

/// Zeroed bytes on 2 MiB boundaries, in transparent huge pages where the kernel gives them
/// (Linux: an anonymous mapping advised `MADV_HUGEPAGE` before its first touch): a decode step
/// streams every tile once, and with 4 KiB pages the page walks cost a fifth of
/// single-sequence speed.
pub(crate) struct Pages {
    ptr: *mut u8,
    len: usize,
    /// The mapping or allocation to give back.
    base: *mut u8,
    size: usize,
}

// SAFETY: `Pages` owns its bytes like a `Vec<u8>`.
unsafe impl Send for Pages {}
// SAFETY: as for `Send`; shared access is read-only.
unsafe impl Sync for Pages {}

const HUGE: usize = 2 << 20;

impl Pages {
    pub(crate) fn zeroed(len: usize) -> Pages {
        #[cfg(target_os = "linux")]
        {
            let size = len + HUGE;
            // SAFETY: a fresh private anonymous mapping; checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base != libc::MAP_FAILED {
                let base = base as *mut u8;
                let ptr = base.wrapping_add(base.align_offset(HUGE));
                // SAFETY: `ptr..ptr + len` lies in the mapping; advice only.
                unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
                return Pages {
                    ptr,
                    len,
                    base,
                    size,
                };
            }
        }
        let layout = Self::layout(len);
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Pages {
            ptr,
            len,
            base: ptr,
            size: 0,
        }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), 64).expect("a tile layout")
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// `fill(i, chunk)` for each `chunk`-byte stretch `i` of the bytes (the last may be
    /// shorter), on the kernels' threads.
    pub(crate) fn fill_chunks(&mut self, chunk: usize, fill: impl Fn(usize, &mut [u8]) + Sync) {
        let chunks: Vec<std::sync::Mutex<&mut [u8]>> = self
            .as_mut_slice()
            .chunks_mut(chunk.max(1))
            .map(std::sync::Mutex::new)
            .collect();
        let team = super::team::Team::get(crate::llm::device::matmul_threads());
        team.run(chunks.len(), |i| {
            fill(i, &mut chunks[i].lock().unwrap_or_else(|e| e.into_inner()))
        });
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.size > 0 {
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping made in `zeroed`.
            unsafe {
                libc::munmap(self.base as *mut libc::c_void, self.size);
            }
        } else {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.base, Self::layout(self.len)) }
        }
    }
}
