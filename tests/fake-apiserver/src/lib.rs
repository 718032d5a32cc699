//! fake-apiserver
