//! The VDDK configuration file handed to `VixDiskLib_InitEx`.
//!
//! Ferry writes it from `--buf-size-in-64k` and `--buf-count` (the NFC AIO session
//! buffers, `vixDiskLib.nfcAio.Session.BufSizeIn64KB` / `.BufCount`, which also size
//! Ferry's own pool) merged with an operator-supplied file (`--vddk-config`). Keys are
//! matched case-insensitively, as VDDK does; unknown or misspelled keys (the common
//! `…BufSizeIn64K`) are kept but warned about, with a suggestion.

/// Cap on an operator config file.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Cap on its lines.
pub const MAX_CONFIG_LINES: usize = 2048;
/// Cap on one key or value.
pub const MAX_FIELD_LEN: usize = 1024;

/// The AIO buffer size key.
pub const KEY_BUF_SIZE: &str = "vixDiskLib.nfcAio.Session.BufSizeIn64KB";
/// The AIO buffer count key.
pub const KEY_BUF_COUNT: &str = "vixDiskLib.nfcAio.Session.BufCount";

/// Keys VDDK documents (reference/vddk.md §2.2).
pub const KNOWN_KEYS: &[&str] = &[
    "tmpDirectory",
    "vixDiskLib.transport.LogLevel",
    "vixDiskLib.nfc.LogLevel",
    "log.fileName",
    "log.fileLevel",
    "vixDiskLib.nfc.AcceptTimeoutMs",
    "vixDiskLib.nfc.RequestTimeoutMs",
    "vixDiskLib.nfc.ReadTimeoutMs",
    "vixDiskLib.nfc.WriteTimeoutMs",
    "vixDiskLib.nfcFssrvr.TimeoutMs",
    "vixDiskLib.nfcFssrvrWrite.TimeoutMs",
    KEY_BUF_SIZE,
    KEY_BUF_COUNT,
    "vixDiskLib.transport.san.blacklist",
    "vixDiskLib.transport.san.whitelist",
    "vixDiskLib.transport.san.denyList",
    "vixDiskLib.transport.san.allowList",
    "vixDiskLib.transport.hotadd.NoNfcSession",
    "vixDiskLib.ssl.enableSslFIPS",
    "vixDiskLib.phoneHome.EnablePhoneHome",
    "vixDiskLib.phoneHome.ProductName",
    "vixDiskLib.phoneHome.ProductVersion",
];

/// A config file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Larger than [`MAX_CONFIG_BYTES`].
    #[error("VDDK config file is {0} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge(usize),
    /// More than [`MAX_CONFIG_LINES`] lines.
    #[error("VDDK config file has more than {MAX_CONFIG_LINES} lines")]
    TooManyLines,
    /// A line that is not `key = value`.
    #[error("VDDK config line {line}: expected `key = value`, got {text:?}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line (cut to 80 characters).
        text: String,
    },
}

/// One `key = value` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as written.
    pub key: String,
    /// The value, unquoted.
    pub value: String,
}

/// Parse a config file: `key = value` per line, `#` comments, blank lines, optional
/// double quotes around the value.
pub fn parse(text: &str) -> Result<Vec<Setting>, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge(text.len()));
    }
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if i >= MAX_CONFIG_LINES {
            return Err(ConfigError::TooManyLines);
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || ConfigError::Syntax {
            line: i + 1,
            text: line.chars().take(80).collect(),
        };
        let (k, v) = line.split_once('=').ok_or_else(syntax)?;
        let key = k.trim();
        let mut value = v.trim();
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = &value[1..value.len() - 1];
        }
        if key.is_empty()
            || key.len() > MAX_FIELD_LEN
            || value.len() > MAX_FIELD_LEN
            || key.chars().any(|c| c.is_whitespace() || c.is_control())
            || value.chars().any(char::is_control)
        {
            return Err(syntax());
        }
        out.push(Setting {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// The documented key a (possibly misspelled) key most likely meant.
pub fn suggest(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase();
    KNOWN_KEYS
        .iter()
        // A distance of at most 3 needs lengths within 3: skip the O(n·m) work
        // otherwise, so a file of long junk keys costs next to nothing.
        .filter(|known| known.len().abs_diff(k.len()) <= 3)
        .map(|known| (edit_distance(&k, &known.to_ascii_lowercase()), *known))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The file Ferry hands to InitEx, and the warnings to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// File contents.
    pub text: String,
    /// One line per problem found in the operator's file.
    pub warnings: Vec<String>,
    /// The NFC AIO settings the file gives VDDK.
    pub nfc: NfcAio,
}

/// The NFC AIO session settings VDDK is given: `None` leaves a key to the operator's
/// file, or (when that does not set it either) to VDDK's own default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NfcAio {
    /// `vixDiskLib.nfcAio.Session.BufSizeIn64KB`.
    pub buf_size_in_64k: Option<u64>,
    /// `vixDiskLib.nfcAio.Session.BufCount`.
    pub buf_count: Option<u64>,
}

impl NfcAio {
    /// From flags where 0 means "not set" (VDDK's default), as in Forklift's provider
    /// settings.
    pub fn from_flags(buf_size_in_64k: Option<u64>, buf_count: Option<u64>) -> NfcAio {
        NfcAio {
            buf_size_in_64k: buf_size_in_64k.filter(|n| *n > 0),
            buf_count: buf_count.filter(|n| *n > 0),
        }
    }
}

/// Merge the operator's settings with the NFC AIO settings given by flags (`nfc`; a
/// flag wins over the file). The operator's AIO keys are kept when no flag sets them,
/// and dropped when their value is 0 ("VDDK's default"). `rendered.nfc` says what VDDK
/// is finally given.
pub fn render(operator: &[Setting], nfc: NfcAio) -> Rendered {
    let mut warnings = Vec::new();
    let mut given = NfcAio::default();
    let mut lines = vec!["# Written by ferry for VixDiskLib_InitEx".to_string()];
    for s in operator {
        let known = KNOWN_KEYS.iter().find(|k| k.eq_ignore_ascii_case(&s.key));
        match known {
            Some(&KEY_BUF_SIZE) | Some(&KEY_BUF_COUNT) => {
                let size = known == Some(&KEY_BUF_SIZE);
                let (flag, slot) = if size {
                    (nfc.buf_size_in_64k, &mut given.buf_size_in_64k)
                } else {
                    (nfc.buf_count, &mut given.buf_count)
                };
                if let Some(ours) = flag {
                    if s.value.trim() != ours.to_string() {
                        warnings.push(format!(
                            "VDDK config sets {} = {}; using {ours} from --buf-size-in-64k/--buf-count",
                            s.key, s.value
                        ));
                    }
                    continue;
                }
                match s.value.trim().parse::<u64>() {
                    Ok(0) => continue, // 0: VDDK's default, so the key is left out
                    Ok(n) => *slot = Some(n),
                    Err(_) => warnings.push(format!(
                        "VDDK config sets {} = {:?}, which is not a number (passed to VDDK unchanged)",
                        s.key, s.value
                    )),
                }
            }
            Some(_) => {}
            None => warnings.push(match suggest(&s.key) {
                Some(k) => format!(
                    "unknown VDDK config key {:?}: did you mean {k:?}? (passed to VDDK unchanged)",
                    s.key
                ),
                None => format!(
                    "unknown VDDK config key {:?} (passed to VDDK unchanged)",
                    s.key
                ),
            }),
        }
        lines.push(format!("{} = \"{}\"", s.key, s.value));
    }
    if let Some(n) = nfc.buf_size_in_64k {
        lines.push(format!("{KEY_BUF_SIZE} = \"{n}\""));
        given.buf_size_in_64k = Some(n);
    }
    if let Some(n) = nfc.buf_count {
        lines.push(format!("{KEY_BUF_COUNT} = \"{n}\""));
        given.buf_count = Some(n);
    }
    Rendered {
        text: lines.join("\n") + "\n",
        warnings,
        nfc: given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_keys_values_quotes_and_comments() {
        let s =
            parse("# c\n\ntmpDirectory = \"/tmp/x\"\nvixDiskLib.nfc.LogLevel=2\n").expect("parse");
        assert_eq!(
            s,
            vec![
                Setting {
                    key: "tmpDirectory".into(),
                    value: "/tmp/x".into()
                },
                Setting {
                    key: "vixDiskLib.nfc.LogLevel".into(),
                    value: "2".into()
                },
            ]
        );
    }

    #[test]
    fn parse_rejects_a_line_without_equals() {
        assert!(matches!(
            parse("just words\n"),
            Err(ConfigError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn parse_rejects_an_oversized_file() {
        let big = "a = b\n".repeat(MAX_CONFIG_BYTES / 6 + 1);
        assert!(matches!(parse(&big), Err(ConfigError::TooLarge(_))));
    }

    #[test]
    fn misspelled_buf_size_key_suggests_the_real_one() {
        assert_eq!(
            suggest("vixDiskLib.nfcAio.Session.BufSizeIn64K"),
            Some(KEY_BUF_SIZE)
        );
    }

    #[test]
    fn render_overrides_aio_keys_and_warns_on_unknown() {
        let op = parse("VixDiskLib.nfcAio.Session.BufCount = 8\nvixDiskLib.nfcAio.Session.BufSizeIn64K = 16\nvixDiskLib.nfc.ReadTimeoutMs = 60000\n").expect("parse");
        let r = render(&op, NfcAio::from_flags(Some(16), Some(4)));
        assert!(
            r.text
                .contains("vixDiskLib.nfcAio.Session.BufSizeIn64KB = \"16\""),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("vixDiskLib.nfcAio.Session.BufCount = \"4\""),
            "{}",
            r.text
        );
        assert!(!r.text.contains("= \"8\""), "{}", r.text);
        assert!(
            r.text.contains("vixDiskLib.nfc.ReadTimeoutMs = \"60000\""),
            "{}",
            r.text
        );
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("did you mean \"vixDiskLib.nfcAio.Session.BufSizeIn64KB\"")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn without_flags_the_operators_aio_keys_pass_and_zero_means_vddks_default() {
        // Forklift with UseVddkAioOptimization: the file sets both.
        let op = parse(
            "vixDiskLib.nfcAio.Session.BufSizeIn64KB=128\nvixDiskLib.nfcAio.Session.BufCount=8\n",
        )
        .expect("parse");
        let r = render(&op, NfcAio::default());
        assert!(r.text.contains("BufSizeIn64KB = \"128\""), "{}", r.text);
        assert!(r.text.contains("BufCount = \"8\""), "{}", r.text);
        assert_eq!(r.nfc, NfcAio::from_flags(Some(128), Some(8)));
        // Without it (or with 0): no AIO key at all, VDDK's own defaults apply.
        for text in [
            "vixDiskLib.nfc.ReadTimeoutMs=1000\n",
            "vixDiskLib.nfcAio.Session.BufSizeIn64KB=0\nvixDiskLib.nfcAio.Session.BufCount=0\n",
        ] {
            let r = render(&parse(text).expect("parse"), NfcAio::default());
            assert!(!r.text.contains("nfcAio"), "{}", r.text);
            assert_eq!(r.nfc, NfcAio::default());
            assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        }
        // A flag of 0 is "not set" too.
        assert_eq!(NfcAio::from_flags(Some(0), Some(0)), NfcAio::default());
        // Every row of the migration guide's tuning table.
        for (size, count) in [(64, 4), (128, 8), (256, 16), (512, 32)] {
            let r = render(&[], NfcAio::from_flags(Some(size), Some(count)));
            assert!(
                r.text.contains(&format!("BufSizeIn64KB = \"{size}\"")),
                "{}",
                r.text
            );
            assert!(
                r.text.contains(&format!("BufCount = \"{count}\"")),
                "{}",
                r.text
            );
        }
    }
}
