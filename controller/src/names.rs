//! Names the controller gives objects: import pods (CDI's `importer-<pvc>` and
//! `importer-<pvc>-checkpoint-<current>`), PVCs from the plan's template, Lease slots,
//! label values. Kubernetes caps names and label values at 63 characters; a longer
//! name is cut and given a hash of the whole, as CDI's `naming.GetResourceName` does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Longest DNS-1123 label (names of pods, PVCs, Leases, label values).
pub const MAX_NAME: usize = 63;
/// Longest PVC name template accepted.
pub const MAX_TEMPLATE_LEN: usize = 1024;
/// Most `{{…}}` actions in a template.
pub const MAX_TEMPLATE_ACTIONS: usize = 64;

/// FNV-1a (64-bit): a short, stable hash for cut names (not for security).
pub fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `name` if it fits in [`MAX_NAME`]; otherwise its first characters, `-`, and 10 hex
/// digits of its hash, 63 characters in all, never ending in `-`.
pub fn fit(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    let hash = format!("{:010x}", fnv64(name) & 0xff_ffff_ffff);
    let mut keep = MAX_NAME - hash.len() - 1;
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let head = name[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// Lower-case `s`, turn every character outside `[a-z0-9-]` into `-`, squeeze and
/// trim the dashes, and [`fit`] it: a DNS-1123 label (empty input gives `x`).
pub fn dns_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let t = out.trim_matches('-');
    if t.is_empty() {
        "x".to_string()
    } else {
        fit(t)
    }
}

/// Whether `s` is a DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The import pod of a round: `importer-<pvc>` for a cold copy,
/// `importer-<pvc>-checkpoint-<current>` for a checkpoint (CDI's names).
pub fn pod_name(pvc: &str, checkpoint: Option<&str>) -> String {
    match checkpoint {
        None => fit(&format!("importer-{pvc}")),
        Some(c) => fit(&format!("importer-{pvc}-checkpoint-{}", dns_label(c))),
    }
}

/// The Lease holding slot `n` of a limit key (`host:esx1.example.com`).
pub fn slot_lease(key: &str, n: u32) -> String {
    let suffix = format!("-{n}");
    let base = dns_label(&format!("ferry-slot-{key}"));
    // Keep the key's hash in the name when it had to be cut, then add the slot.
    let base = if base.len() + suffix.len() > MAX_NAME {
        let hash = format!("{:010x}", fnv64(key) & 0xff_ffff_ffff);
        let keep = MAX_NAME - suffix.len() - hash.len() - 1;
        format!("{}-{hash}", base[..keep].trim_end_matches('-'))
    } else {
        base
    };
    format!("{base}{suffix}")
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let t = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if t.is_empty() {
        return "x".to_string();
    }
    let f = fit(t);
    f.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Why a PVC name template could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Longer than [`MAX_TEMPLATE_LEN`] or more than [`MAX_TEMPLATE_ACTIONS`] actions.
    #[error(
        "the PVC name template is too long (at most {MAX_TEMPLATE_LEN} bytes, {MAX_TEMPLATE_ACTIONS} actions)"
    )]
    TooLong,
    /// A `{{` with no `}}`.
    #[error("the PVC name template has an unclosed {{{{ at byte {0}")]
    Unclosed(usize),
    /// An action that is not `.Var`, `.Var | lower`, `if .Var`, `else` or `end`.
    #[error(
        "the PVC name template's action {{{{{0}}}}} is not supported (use .PlanName, .VmName, .DiskIndex, .Shared, | lower, if/else/end)"
    )]
    Action(String),
    /// A variable the template does not know.
    #[error(
        "the PVC name template names {0}, which is not one of .PlanName, .VmName, .DiskIndex, .Shared"
    )]
    Variable(String),
    /// `if` without `end`, or `end`/`else` without `if`.
    #[error("the PVC name template's if/else/end do not match")]
    Unbalanced,
    /// The result is not a DNS-1123 label.
    #[error(
        "the PVC name template gives {0:?}, which is not a valid PVC name (lower-case letters, digits and '-', at most 63)"
    )]
    Invalid(String),
}

/// The template's variables for one disk (the seed's `.PlanName`, `.VmName`,
/// `.DiskIndex`, `.Shared`).
#[derive(Debug, Clone)]
pub struct TemplateVars {
    /// The plan's name.
    pub plan_name: String,
    /// The VM's name.
    pub vm_name: String,
    /// The disk's index in the VM.
    pub disk_index: u32,
    /// The disk is shared between VMs.
    pub shared: bool,
}

impl TemplateVars {
    fn map(&self) -> BTreeMap<&'static str, (String, bool)> {
        BTreeMap::from([
            (
                ".PlanName",
                (self.plan_name.clone(), !self.plan_name.is_empty()),
            ),
            (".VmName", (self.vm_name.clone(), !self.vm_name.is_empty())),
            (".DiskIndex", (self.disk_index.to_string(), true)),
            (".Shared", (self.shared.to_string(), self.shared)),
        ])
    }
}

/// The default template.
pub const DEFAULT_PVC_TEMPLATE: &str = "{{.PlanName}}-{{.VmName}}-disk-{{.DiskIndex}}";

/// Render a PVC name template (a subset of Go's text/template: `{{.Var}}`,
/// `{{.Var | lower}}`, `{{if .Var}}…{{else}}…{{end}}`). The VM name is made a DNS label
/// first (`My VM` → `my-vm`); the result must be a DNS-1123 label, and is [`fit`] when
/// longer than 63 characters.
pub fn render_pvc_name(template: &str, vars: &TemplateVars) -> Result<String, TemplateError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(TemplateError::TooLong);
    }
    let mut v = vars.clone();
    v.vm_name = dns_label(&v.vm_name);
    v.plan_name = dns_label(&v.plan_name);
    let map = v.map();
    let mut out = String::new();
    // One entry per open `if`: (this branch is emitted, the enclosing one is).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let emitting = |stack: &Vec<(bool, bool)>| stack.last().is_none_or(|&(on, outer)| on && outer);
    let mut rest = template;
    let mut actions = 0usize;
    while let Some(start) = rest.find("{{") {
        if emitting(&stack) {
            out.push_str(&rest[..start]);
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed(template.len() - rest.len() + start));
        };
        actions += 1;
        if actions > MAX_TEMPLATE_ACTIONS {
            return Err(TemplateError::TooLong);
        }
        let action = after[..end].trim();
        let words: Vec<&str> = action.split_whitespace().collect();
        match words.as_slice() {
            ["if", var] => {
                let (_, truthy) = map
                    .get(var)
                    .ok_or_else(|| TemplateError::Variable(var.to_string()))?;
                let outer = emitting(&stack);
                stack.push((*truthy, outer));
            }
            ["else"] => {
                let top = stack.last_mut().ok_or(TemplateError::Unbalanced)?;
                top.0 = !top.0;
            }
            ["end"] => {
                stack.pop().ok_or(TemplateError::Unbalanced)?;
            }
            [var] if var.starts_with('.') => {
                let (value, _) = map
                    .get(var)
                    .ok_or_else(|| TemplateError::Variable(var.to_string()))?;
                if emitting(&stack) {
                    out.push_str(value);
                }
            }
            [var, "|", "lower"] if var.starts_with('.') => {
                let (value, _) = map
                    .get(var)
                    .ok_or_else(|| TemplateError::Variable(var.to_string()))?;
                if emitting(&stack) {
                    let _ = write!(out, "{}", value.to_lowercase());
                }
            }
            _ => return Err(TemplateError::Action(action.to_string())),
        }
        rest = &after[end + 2..];
    }
    if !stack.is_empty() {
        return Err(TemplateError::Unbalanced);
    }
    out.push_str(rest);
    let name = fit(&out);
    if !is_dns_label(&name) {
        return Err(TemplateError::Invalid(out));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(vm: &str, i: u32, shared: bool) -> TemplateVars {
        TemplateVars {
            plan_name: "plan1".into(),
            vm_name: vm.into(),
            disk_index: i,
            shared,
        }
    }

    #[test]
    fn the_default_template_names_plan_vm_and_disk() {
        assert_eq!(
            render_pvc_name(DEFAULT_PVC_TEMPLATE, &vars("My VM_01", 2, false)).unwrap(),
            "plan1-my-vm-01-disk-2"
        );
    }

    #[test]
    fn conditionals_and_lower_work_as_in_go_templates() {
        let t = "{{if .Shared}}shared-{{else}}{{.VmName | lower}}-{{end}}d{{.DiskIndex}}";
        assert_eq!(
            render_pvc_name(t, &vars("web", 0, true)).unwrap(),
            "shared-d0"
        );
        assert_eq!(
            render_pvc_name(t, &vars("web", 1, false)).unwrap(),
            "web-d1"
        );
        let nested = "{{if .Shared}}{{if .VmName}}a{{else}}b{{end}}{{else}}c{{end}}";
        assert_eq!(render_pvc_name(nested, &vars("x", 0, false)).unwrap(), "c");
        assert_eq!(render_pvc_name(nested, &vars("x", 0, true)).unwrap(), "a");
    }

    #[test]
    fn malformed_templates_are_refused_by_name() {
        let v = vars("web", 0, false);
        assert_eq!(
            render_pvc_name("a-{{.VmName", &v),
            Err(TemplateError::Unclosed(2))
        );
        assert_eq!(
            render_pvc_name("{{.Nope}}", &v),
            Err(TemplateError::Variable(".Nope".into()))
        );
        assert!(matches!(
            render_pvc_name("{{printf \"%s\" .VmName}}", &v),
            Err(TemplateError::Action(_))
        ));
        assert_eq!(
            render_pvc_name("{{if .Shared}}a", &v),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            render_pvc_name("a{{end}}", &v),
            Err(TemplateError::Unbalanced)
        );
        assert!(matches!(
            render_pvc_name("UPPER_{{.DiskIndex}}", &v),
            Err(TemplateError::Invalid(_))
        ));
        assert_eq!(
            render_pvc_name(&"{{.VmName}}".repeat(100), &v),
            Err(TemplateError::TooLong)
        );
        assert_eq!(
            render_pvc_name(&"a".repeat(2000), &v),
            Err(TemplateError::TooLong)
        );
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let long = "a".repeat(80);
        let a = fit(&format!("{long}-1"));
        let b = fit(&format!("{long}-2"));
        assert_eq!(a.len(), MAX_NAME);
        assert_ne!(a, b);
        assert!(is_dns_label(&a));
        assert_eq!(pod_name("vm1-disk-0", None), "importer-vm1-disk-0");
        assert_eq!(
            pod_name("vm1-disk-0", Some("snapshot-7")),
            "importer-vm1-disk-0-checkpoint-snapshot-7"
        );
        assert!(pod_name(&long, Some("snapshot-7")).len() <= MAX_NAME);
        let s = slot_lease(&format!("host:{}", "esx".repeat(30)), 49);
        assert!(is_dns_label(&s) && s.ends_with("-49"), "{s}");
        assert_eq!(
            slot_lease("host:esx1.example.com", 0),
            "ferry-slot-host-esx1-example-com-0"
        );
        assert_eq!(label_value("[ds1] vm/vm.vmdk"), "ds1--vm-vm.vmdk");
        assert_eq!(label_value("--"), "x");
    }
}
