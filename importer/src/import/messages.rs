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
