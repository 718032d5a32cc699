//! Failure texts CDI's controller recognises. CDI's `simplifyKnownMessage`
//! (`pkg/controller/util.go`) rewrites a failed importer's termination message to a
//! user-facing text when it contains one of a few phrases; Ferry's failures for the same
//! causes carry the same phrase, so users and UIs see what they would under CDI.

/// What CDI's data processor says when the image does not fit the volume; the controller
/// turns any message containing "is larger than the reported available" into
/// "DataVolume too small to contain image".
pub fn too_small(image: u64, usable: u64) -> String {
    format!(
        "Virtual image size {image} is larger than the reported available storage {usable}. A larger PVC is required."
    )
}

/// The user-facing text CDI's controller shows for a volume too small for the image.
pub const TOO_SMALL_FOR_USERS: &str = "DataVolume too small to contain image";

/// The OS errors CDI's controller recognises, with Go's text for them (`syscall.Errno`'s
/// `Error()`), which is what the phrase in `simplifyKnownMessage` was written against.
const GO_ERRNO_TEXT: [(i32, &str); 2] = [
    (libc::ENOSPC, "no space left on device"),
    (libc::EDQUOT, "disk quota exceeded"),
];

/// Rewrite Rust's description of the OS errors CDI keys on ("No space left on device
/// (os error 28)") into Go's ("no space left on device (os error 28)"), so that the
/// controller's case-sensitive `strings.Contains` finds it and shows
/// [`TOO_SMALL_FOR_USERS`], as it does for CDI's own importer. Everything else is kept.
pub fn with_go_errno_text(message: &str) -> String {
    let mut out = message.to_string();
    for (errno, go) in GO_ERRNO_TEXT {
        let rust = std::io::Error::from_raw_os_error(errno).to_string();
        if let Some(code) = rust.find(" (os error") {
            out = out.replace(&rust, &format!("{go}{}", &rust[code..]));
        }
    }
    out
}

/// Whether CDI's controller would rewrite `message` to [`TOO_SMALL_FOR_USERS`]: the
/// four phrases of `simplifyKnownMessage`, matched as it matches them.
pub fn cdi_simplifies_to_too_small(message: &str) -> bool {
    [
        "is larger than the reported available",
        "no space left on device",
        "file largest block is bigger than maxblock",
        "disk quota exceeded",
    ]
    .iter()
    .any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_errno_text_becomes_gos() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let m = format!("write on the target at offset 4096 failed: {e}");
        assert!(!cdi_simplifies_to_too_small(&m), "{m}");
        let m = with_go_errno_text(&m);
        assert_eq!(
            m,
            "write on the target at offset 4096 failed: no space left on device (os error 28)"
        );
        assert!(cdi_simplifies_to_too_small(&m));
        let e = std::io::Error::from_raw_os_error(libc::EDQUOT);
        let m = with_go_errno_text(&format!("resume journal /data/j: writing: {e}"));
        assert!(m.ends_with("disk quota exceeded (os error 122)"), "{m}");
        assert!(cdi_simplifies_to_too_small(&m));
        let other = "reading the source at offset 0 failed: Input/output error (os error 5)";
        assert_eq!(with_go_errno_text(other), other);
        assert!(cdi_simplifies_to_too_small(&too_small(2, 1)));
    }
}
