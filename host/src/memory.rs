//! Gives freed heap memory back to the operating system.

/// glibc keeps freed memory in its arenas (one per thread that allocated) rather than
/// returning it, so a burst of allocation that was then freed - a grammar that failed to
/// compile after building a large lexer - would stay in the process's resident memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas and returns
    // their free pages, which is always sound to do.
    unsafe {
        malloc_trim(0);
    }
}

/// Elsewhere the allocator decides on its own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
