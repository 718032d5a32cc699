//! Fuzz entry points for the importer's parsers of outside input, shared by `fuzz/`
//! (cargo-fuzz) and the corpus-replay test. Each asserts "never panics, bounded work".

use crate::source::vddk::{config, options};

/// A VDDK config file from an operator: parse, then render with Ferry's AIO settings;
/// whatever parses must render to a file that parses again to the same settings count.
pub fn vddk_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = config::parse(text) {
        let rendered = config::render(&settings, 16, 4);
        let again = config::parse(&rendered.text).expect("rendered config must parse");
        assert!(again.len() <= settings.len() + 2);
    }
}

/// A `vddk://` URI and a thumbprint from the command line or a controller.
pub fn vddk_uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = options::parse_uri(text);
    let _ = options::validate_thumbprint(text);
}
