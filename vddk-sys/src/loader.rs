//! Finding and opening libvixDiskLib.
//!
//! Like nbdkit: for each major version from newest to oldest, try
//! `<libdir>/lib64/libvixDiskLib.so.N` then `<libdir>/libvixDiskLib.so.N` (the second
//! form lets a test library sit directly in the libdir). The library is opened with
//! RTLD_NOW so a missing dependency fails here, not mid-copy.

use std::path::{Path, PathBuf};

use crate::bindings::VixDiskLibApi;
use crate::library::Library;

/// Sonames we accept, newest first (VDDK 9.0, 8.0, 7.0, 6.x).
pub const SONAME_MAJORS: [u32; 4] = [9, 8, 7, 6];
/// Majors too old to use: found only to say so.
const TOO_OLD_MAJORS: [u32; 4] = [5, 4, 3, 2];

/// Symbols every supported library has (VDDK 6.0 and later).
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "VixDiskLib_InitEx",
    "VixDiskLib_Exit",
    "VixDiskLib_ListTransportModes",
    "VixDiskLib_ConnectEx",
    "VixDiskLib_Disconnect",
    "VixDiskLib_Open",
    "VixDiskLib_Close",
    "VixDiskLib_GetTransportMode",
    "VixDiskLib_GetInfo",
    "VixDiskLib_FreeInfo",
    "VixDiskLib_Read",
    "VixDiskLib_GetErrorText",
    "VixDiskLib_FreeErrorText",
];

/// Version-gated symbols: used when present.
pub const OPTIONAL_SYMBOLS: &[&str] = &[
    "VixDiskLib_AllocateConnectParams",
    "VixDiskLib_FreeConnectParams",
    "VixDiskLib_ReadAsync",
    "VixDiskLib_Wait",
    "VixDiskLib_Flush",
    "VixDiskLib_QueryAllocatedBlocks",
    "VixDiskLib_FreeBlockList",
    "VixDiskLib_Cleanup",
    "VixDiskLib_PrepareForAccess",
    "VixDiskLib_EndAccess",
];

/// Why the library could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// No libvixDiskLib.so.{9..6} under the libdir.
    #[error(
        "VDDK library not found: looked for {} (mount the VDDK distribution at the libdir, e.g. /opt/vmware-vix-disklib-distrib)",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// Every path tried.
        searched: Vec<PathBuf>,
    },
    /// Only a library older than 6.0 is there.
    #[error("VDDK library {} is too old: VDDK 6.0 or newer is required", .path.display())]
    TooOld {
        /// The old library.
        path: PathBuf,
    },
    /// dlopen failed (missing dependency, wrong architecture…).
    #[error("cannot load VDDK library {}: {message}", .path.display())]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A symbol every supported VDDK has is missing.
    #[error("VDDK library {} lacks {symbol}: not a usable libvixDiskLib", .path.display())]
    MissingSymbol {
        /// The library.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
}

/// The paths tried for a libdir, in order, with the major each would be.
pub fn candidates(libdir: &Path) -> Vec<(u32, PathBuf)> {
    SONAME_MAJORS
        .iter()
        .flat_map(|&n| {
            let name = format!("libvixDiskLib.so.{n}");
            [
                (n, libdir.join("lib64").join(&name)),
                (n, libdir.join(&name)),
            ]
        })
        .collect()
}

impl Library {
    /// Load the newest libvixDiskLib found under `libdir`.
    pub fn load(libdir: &Path) -> Result<Library, LoadError> {
        let cands = candidates(libdir);
        let Some((major, path)) = cands.iter().find(|(_, p)| p.exists()).cloned() else {
            for n in TOO_OLD_MAJORS {
                for p in [
                    libdir.join("lib64").join(format!("libvixDiskLib.so.{n}")),
                    libdir.join(format!("libvixDiskLib.so.{n}")),
                ] {
                    if p.exists() {
                        return Err(LoadError::TooOld { path: p });
                    }
                }
            }
            return Err(LoadError::NotFound {
                searched: cands.into_iter().map(|(_, p)| p).collect(),
            });
        };
        let open_err = |e: libloading::Error| LoadError::Open {
            path: path.clone(),
            message: e.to_string(),
        };
        // SAFETY: loading a shared library runs its initialisers. This is the library the
        // operator mounted for exactly this purpose (as nbdkit and CDI load it); it is
        // opened RTLD_NOW so unresolved dependencies fail here rather than mid-copy.
        let lib = unsafe {
            libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL)
        }
        .map_err(open_err)?;
        // SAFETY: every symbol is looked up with the signature our header declares for
        // it; a missing one becomes an Err field, checked below before any call.
        let api = unsafe { VixDiskLibApi::from_library(lib) }.map_err(open_err)?;
        let lib = Library::new(api, path.clone(), major);
        for symbol in REQUIRED_SYMBOLS {
            if !lib.has_symbol(symbol) {
                return Err(LoadError::MissingSymbol { path, symbol });
            }
        }
        Ok(lib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_try_lib64_then_libdir_newest_first() {
        let c = candidates(Path::new("/v"));
        assert_eq!(c[0], (9, PathBuf::from("/v/lib64/libvixDiskLib.so.9")));
        assert_eq!(c[1], (9, PathBuf::from("/v/libvixDiskLib.so.9")));
        assert_eq!(c.last().map(|x| x.0), Some(6));
    }

    #[test]
    fn empty_libdir_names_every_path_searched() {
        let dir = std::env::temp_dir().join("vddk-sys-empty-libdir-test");
        let _ = std::fs::create_dir_all(&dir);
        let e = Library::load(&dir).expect_err("nothing there");
        let msg = e.to_string();
        assert!(
            msg.contains("libvixDiskLib.so.9") && msg.contains("libvixDiskLib.so.6"),
            "{msg}"
        );
    }

    #[test]
    fn only_a_5x_library_is_too_old() {
        let dir = tempdir();
        std::fs::write(dir.join("libvixDiskLib.so.5"), b"").expect("write");
        let e = Library::load(&dir).expect_err("too old");
        assert!(matches!(e, LoadError::TooOld { .. }), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_library_fails_to_open() {
        let dir = tempdir();
        std::fs::write(dir.join("libvixDiskLib.so.8"), b"not an ELF file").expect("write");
        let e = Library::load(&dir).expect_err("not a library");
        assert!(matches!(e, LoadError::Open { .. }), "{e}");
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vddk-sys-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
