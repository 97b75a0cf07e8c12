//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory that was freed inside its per-thread arenas
//! for reuse, and only returns what sits at the very top of an arena. A
//! member's allocations come and go in bursts (request buffers, apply batches,
//! snapshot copies), so its resident memory drifts up towards its peak and
//! stays there. `malloc_trim` walks every arena and releases the free pages
//! in the middle of them too; doing that every few seconds keeps the resident
//! size close to what is actually in use, for a few milliseconds of one thread.

use std::sync::Once;
use std::time::Duration;

/// How often the heap is trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Starts, once per process, a thread that trims the heap every [`TRIM_EVERY`].
/// A no-op where the C library is not glibc.
pub fn start_trimmer() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only reorganises the allocator's own free lists; it is
                // safe to call from any thread at any time.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the heap trimmer: {e}");
            }
        }
    });
}
