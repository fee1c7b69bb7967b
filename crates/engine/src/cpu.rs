//! Process-wide settings under which libtorch's CPU kernels run at this machine's speed.
//!
//! Two things slow a CPU render down that no tensor code can fix: glibc returning every large
//! buffer to the kernel on free, and MKL choosing its matrix kernels by CPU vendor. Binaries
//! call [`tune_process`] once, first thing in `main`.

use std::os::raw::c_int;

/// Applies both settings. Call before any tensor exists and before threads start.
pub fn tune_process() {
    tune_allocator();
    // The override below lives in an rlib; naming it here makes sure its object file is
    // linked into every binary that tunes itself, so the dynamic symbol exists to find.
    std::hint::black_box(mkl_serv_intel_cpu_true as extern "C" fn() -> c_int);
}

/// Tunes glibc's allocator for libtorch's pattern of large, short-lived CPU buffers.
///
/// By default glibc serves every allocation above a threshold with a fresh `mmap` and unmaps
/// it on free, so each step of a render page-faults its activations in again. Raising the
/// trim threshold and serving no allocation by `mmap` keeps freed buffers in the heap for the
/// next step. The largest buffers of an SD 1.5 step (GEGLU projections, 42–84 MB at 256×256)
/// are over 32 MiB, the highest mmap threshold glibc accepts, so raising the threshold alone
/// is not enough. Measured on the engine benchmark: page faults 2.8 M to 1.1 M, kernel time
/// 8.3 s to 3.4 s. glibc still maps memory when the heap cannot grow, and threads other than
/// the main one keep their own arenas, whose heaps are capped at 64 MiB. A no-op on other C
/// libraries.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Set to any value to let MKL choose its kernels by CPU vendor again, as it does by default.
pub const STOCK_MKL_DISPATCH_ENV: &str = "HUAXIAN_MKL_STOCK_DISPATCH";

/// MKL, which libtorch carries for its CPU matrix products, asks this function whether the CPU
/// is Intel's, and on any other CPU runs its AVX2 code even where the CPU has AVX-512. On the
/// AMD EPYC this project is measured on, that halves the speed of every `linear` layer (SD
/// 1.5's UNet: 5.6 s per CFG step for four images, 3.7 s with this override).
///
/// libtorch calls it through its procedure linkage table, so a definition exported from the
/// executable takes precedence over MKL's own. Answering yes makes MKL pick kernels by the
/// CPU's features alone, which it checks separately, so a CPU without AVX-512 still gets
/// AVX2 code. Results stay within float32 rounding of the stock kernels. Binaries export this
/// symbol with `-Wl,--export-dynamic-symbol` (see their build scripts); [`mkl_override_active`]
/// tells whether that worked. Setting [`STOCK_MKL_DISPATCH_ENV`] restores the vendor check.
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> c_int {
    static ANSWER: std::sync::OnceLock<c_int> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        if std::env::var_os(STOCK_MKL_DISPATCH_ENV).is_some() {
            c_int::from(cpu_is_intel())
        } else {
            1
        }
    })
}

/// Whether libtorch's MKL will call [`mkl_serv_intel_cpu_true`] rather than its own: true when
/// this executable exports it, and the stock behaviour was not asked for.
pub fn mkl_override_active() -> bool {
    if std::env::var_os(STOCK_MKL_DISPATCH_ENV).is_some() {
        return false;
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mkl_serv_intel_cpu_true".as_ptr()) };
    std::ptr::eq(found.cast_const().cast::<()>(), mkl_serv_intel_cpu_true as *const ())
}

fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: cpuid leaf 0 exists on every x86_64 CPU. (Newer compilers call it safe.)
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
        &vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_export_the_override_as_the_binaries_do() {
        // build.rs exports the symbol; without it MKL would keep its own vendor check.
        if std::env::var_os(STOCK_MKL_DISPATCH_ENV).is_none() {
            assert!(mkl_override_active());
        }
    }

    #[test]
    fn vendor_string_is_read_from_cpuid() {
        // Whatever this machine is, the answer must match /proc/cpuinfo's vendor line.
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let Some(vendor) = info.lines().find_map(|l| l.strip_prefix("vendor_id")) else {
            return;
        };
        let intel = vendor.trim_start_matches([' ', '\t', ':']).trim() == "GenuineIntel";
        assert_eq!(cpu_is_intel(), intel, "{vendor}");
    }
}
