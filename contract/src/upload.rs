//! The upload pod's environment, as CDI's controller sets it for `cdi-uploadserver`
//! (`makeUploadPodContainers`, pkg/controller/upload-controller.go, read in
//! cmd/cdi-uploadserver/uploadserver.go), the one variable Ferry adds (the token), and
//! the termination message of a finished upload.

/// The address to listen on (CDI: default `0.0.0.0`; an empty value means every
/// interface).
pub const LISTEN_ADDRESS: &str = "LISTEN_ADDRESS";
/// The port to listen on (CDI: default 8443).
pub const LISTEN_PORT: &str = "LISTEN_PORT";
/// The PEM certificate chain the server presents.
pub const TLS_CERT_FILE: &str = "TLS_CERT_FILE";
/// The PEM private key of that certificate.
pub const TLS_KEY_FILE: &str = "TLS_KEY_FILE";
/// Where the disk is written: a file, or the block device CDI maps
/// (`/dev/cdi-block-volume`); CDI's default is `/data/disk.img`.
pub const DESTINATION: &str = "DESTINATION";
/// The PVC's storage request, a Kubernetes quantity.
pub const UPLOAD_IMAGE_SIZE: &str = "UPLOAD_IMAGE_SIZE";
/// Ferry's own: the secret an uploading client presents (`Authorization: Bearer`, or
/// the last segment of `/upload/<token>`).
pub const FERRY_UPLOAD_TOKEN: &str = "FERRY_UPLOAD_TOKEN";
/// CDI's default destination (`common.ImporterWritePath`).
pub const DEFAULT_DESTINATION: &str = "/data/disk.img";
/// CDI's default listen port (`common.UploadServerPort`).
pub const DEFAULT_LISTEN_PORT: u16 = 8443;
/// The termination message's `message` after a completed upload (CDI's words).
pub const UPLOAD_COMPLETE: &str = "Upload Complete";
