//! VixError codes the fake returns, and the texts GetErrorText gives for them.

use vddk_sys::VixError;

pub(crate) const VIX_OK: VixError = 0;
pub(crate) const VIX_E_FAIL: VixError = 1;
pub(crate) const VIX_E_OUT_OF_MEMORY: VixError = 2;
pub(crate) const VIX_E_INVALID_ARG: VixError = 3;
pub(crate) const VIX_E_FILE_NOT_FOUND: VixError = 4;
pub(crate) const VIX_E_FILE_ERROR: VixError = 7;
pub(crate) const VIX_E_AUTHENTICATION_FAIL: VixError = 35;
pub(crate) const VIX_E_HOST_CONNECTION_LOST: VixError = 36;
pub(crate) const VIX_E_INVALID_HANDLE: VixError = 1000;
pub(crate) const VIX_E_VM_NOT_FOUND: VixError = 4000;
pub(crate) const VIX_E_SNAPSHOT_NOTFOUND: VixError = 13003;
pub(crate) const VIX_E_HOST_NETWORK_CONN_REFUSED: VixError = 14009;
pub(crate) const VIX_E_DISK_OUTOFRANGE: VixError = 16007;
pub(crate) const VIX_E_CANNOT_CONNECT_TO_HOST: VixError = 18000;
pub(crate) const VIX_ASYNC: VixError = 25000;
pub(crate) const VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED: VixError = 26000;

/// The text for an error (its low 16 bits); "Unknown error" for codes we do not know.
pub(crate) fn text(e: VixError) -> &'static str {
    match e & 0xFFFF {
        0 => "The operation was successful",
        1 => {
            "Unknown error (at connect or open this is how VDDK reports a server SSL \
             thumbprint that does not match, or an independent-mode disk)"
        }
        2 => "NFC server out of memory",
        3 => "One of the parameters was invalid",
        4 => "The file specified was not found",
        5 => "The object is busy",
        6 => "The operation is not supported",
        7 => "A file access error occurred on the host or guest operating system",
        8 => "There is not enough space on the file system",
        11 => "The file is write-protected",
        13 => "Insufficient permissions",
        15 => "The file is already in use",
        24 => "The buffer is too small",
        35 => "Authentication failed",
        36 => "The host connection was lost",
        44 => "The argument is too big",
        1000 => "The handle is not a valid VIX object",
        3014 => "Insufficient permissions in the host operating system",
        4000 => "The virtual machine cannot be found",
        13003 => "The snapshot was not found",
        14008 => "The host server was not found",
        14009 => "The host refused the network connection",
        14010 => "A TCP socket error occurred on the host",
        14011 => "The TCP connection to the host was lost",
        16000 => "The disk is invalid",
        16001 => "The disk library has not been initialized",
        16002 => "A disk I/O error occurred",
        16003 => "The disk chain is incomplete",
        16006 => "The disk needs repair",
        16007 => "The sector range is out of bounds",
        16008 => "The parent disk's content ID does not match",
        16013 => "The disk type is not supported",
        16014 => "The disk needs a key",
        16052 => "The metadata key was not found",
        16053 => "The disk subsystem failed to initialize",
        16054 => "The connection is not valid",
        16064 => "There is no license for this operation",
        18000 => "Cannot connect to host",
        18001 => "The operation is not supported for a remote host",
        25000 => "The asynchronous operation is in progress",
        26000 => "Mixing synchronous and asynchronous I/O on one disk handle is not supported",
        30006 => "Could not resolve the host name",
        30007 => "Could not connect to the host",
        30035 => "The SSL connection to the host failed",
        _ => "Unknown error",
    }
}
