//! Process-wide settings under which libtorch's CPU kernels run at this machine's speed.
//!
//! Two things slow a CPU render down that no tensor code can fix: glibc returning large
//! buffers to the kernel on free, and MKL choosing its matrix kernels by CPU vendor. Binaries
//! that render call [`tune_process`] first thing in `main`, before any thread starts.

/// Applies both settings. Call before any tensor exists and before threads start.
pub fn tune_process() {
    tune_allocator();
    // The override lives in an rlib; naming it here makes sure its object file is linked
    // into every binary that tunes itself, so the exported symbol exists to be found.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    std::hint::black_box(mkl::mkl_serv_intel_cpu_true as extern "C" fn() -> std::os::raw::c_int);
}

/// Tunes glibc's allocator for libtorch's pattern of large, short-lived CPU buffers.
///
/// By default glibc serves every allocation above a threshold with a fresh `mmap` and unmaps
/// it on free, so each step of a render page-faults its activations in again. The largest
/// buffers of an SD 1.5 step (GEGLU projections, 42–84 MB at 256×256; weights widened from
/// half precision, up to 118 MB) are over 32 MiB, the highest mmap threshold glibc accepts,
/// so this serves no allocation by `mmap` and keeps up to 1 GiB free at the top of the heap.
/// One arena for all threads: a thread's own arena is made of 64 MiB heaps, and anything
/// larger is mapped and unmapped per call whatever the settings, which would undo this for
/// the worker, whose renders run on a thread of their own. glibc still maps memory when the
/// heap cannot grow. Measured on the engine benchmark: page faults 2.8 M to 1.1 M, kernel
/// time 8.3 s to 3.4 s. A no-op on other C libraries.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Set to a value other than empty, `0` or `false` to let MKL choose its kernels by CPU
/// vendor again, as it does on its own.
pub const STOCK_MKL_DISPATCH_ENV: &str = "HUAXIAN_MKL_STOCK_DISPATCH";

/// Whether MKL will ask [`mkl::mkl_serv_intel_cpu_true`] and get a different answer from its
/// own: this executable exports the override, libtorch carries MKL, the CPU is not Intel's
/// but has AVX-512, and the stock behaviour was not asked for.
pub fn mkl_override_active() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return mkl::exported() && mkl::carried_by_libtorch() && mkl::overrides_vendor();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    false
}

/// The code path MKL's dispatcher chose (its `mkl_serv_cpu_detect`; higher is wider: 7 is
/// AVX-512 on this build, 0 its generic path), or `None` when libtorch carries no MKL.
pub fn mkl_dispatch_level() -> Option<i32> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return mkl::dispatch_level();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    None
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod mkl {
    //! The override itself, on Linux x86_64, the one platform where libtorch carries MKL.

    use std::ffi::CStr;
    use std::os::raw::c_int;
    use std::sync::OnceLock;

    use super::STOCK_MKL_DISPATCH_ENV;

    /// MKL, which libtorch carries for its CPU matrix products, asks this function whether
    /// the CPU is Intel's, and on any other CPU runs generic code even where the CPU has
    /// AVX-512. On the AMD EPYC this project is measured on, that halves the speed of every
    /// `linear` layer (SD 1.5's UNet: 5.6 s per guided step for four images at 256×256, 3.7 s
    /// with this override).
    ///
    /// libtorch calls it through its procedure linkage table, so a definition exported from
    /// the executable is found before MKL's own. This one says yes on a CPU with AVX-512 (MKL
    /// then picks its kernels by the CPU's features, which it checks separately) and otherwise
    /// gives MKL's own answer, so CPUs where the gain was not measured keep MKL's choice.
    /// Results stay within float32 rounding of the stock kernels. Binaries export the symbol
    /// through their build scripts (`crates/engine/mkl_export.rs`). Setting
    /// [`STOCK_MKL_DISPATCH_ENV`] restores the vendor check. MKL also checks the vendor inline
    /// in a few places that do not go through this function; those keep its choice.
    #[no_mangle]
    pub extern "C" fn mkl_serv_intel_cpu_true() -> c_int {
        // Cached: cpuid leaves a virtual machine on every call, and MKL may ask often.
        static ANSWER: OnceLock<c_int> = OnceLock::new();
        *ANSWER.get_or_init(|| c_int::from(overrides_vendor() || cpu_is_intel()))
    }

    /// Whether the override answers yes where MKL would say no. Decided once per process.
    pub(super) fn overrides_vendor() -> bool {
        static ANSWER: OnceLock<bool> = OnceLock::new();
        *ANSWER.get_or_init(|| {
            let stock = std::env::var(STOCK_MKL_DISPATCH_ENV)
                .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            !stock && !cpu_is_intel() && std::arch::is_x86_feature_detected!("avx512f")
        })
    }

    const NAME: &CStr = c"mkl_serv_intel_cpu_true";

    /// Whether the first definition the dynamic linker finds is ours.
    pub(super) fn exported() -> bool {
        // SAFETY: dlsym with a pseudo-handle and a NUL-terminated name only looks it up.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, NAME.as_ptr()) };
        std::ptr::eq(
            found.cast_const().cast::<()>(),
            mkl_serv_intel_cpu_true as *const (),
        )
    }

    /// Whether a library after the executable (libtorch's MKL) defines the function too.
    pub(super) fn carried_by_libtorch() -> bool {
        // SAFETY: as in `exported`.
        !unsafe { libc::dlsym(libc::RTLD_NEXT, NAME.as_ptr()) }.is_null()
    }

    pub(super) fn dispatch_level() -> Option<i32> {
        // SAFETY: a lookup by name; when found, the symbol is MKL's `int (void)` function,
        // which reads cpuid and caches its answer.
        unsafe {
            let found = libc::dlsym(libc::RTLD_DEFAULT, c"mkl_serv_cpu_detect".as_ptr());
            if found.is_null() {
                return None;
            }
            let detect: extern "C" fn() -> c_int = std::mem::transmute(found);
            Some(detect())
        }
    }

    pub(super) fn cpu_is_intel() -> bool {
        // SAFETY: cpuid leaf 0 exists on every x86_64 CPU. (Newer compilers call it safe.)
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
        &vendor == b"GenuineIntel"
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use super::mkl;

    #[test]
    fn vendor_string_is_read_from_cpuid() {
        let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo on Linux");
        let vendor = info
            .lines()
            .find_map(|l| l.strip_prefix("vendor_id"))
            .expect("a vendor_id line");
        let intel = vendor.trim_start_matches([' ', '\t', ':']).trim() == "GenuineIntel";
        assert_eq!(mkl::cpu_is_intel(), intel, "{vendor}");
    }

    #[test]
    fn test_binaries_export_the_override_as_the_binaries_do() {
        // mkl_export.rs exports the symbol; without it libtorch would find MKL's own first.
        assert!(mkl::exported());
    }
}
