//! The names that reach libvirt, file names or labels: a VM's domain name and its inverse,
//! and the checks every such name passes first.

use super::FieldError;
use super::limits::{DNS_LABEL_MAX_LEN, DNS_SUBDOMAIN_MAX_LEN};
use crate::api::quoted;

/// The libvirt domain name of a VM: `<namespace>_<name>`. Both parts are DNS labels, which
/// have no '_', so the name maps back to exactly one VM ([`vm_of_domain`]).
pub fn domain_name(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

/// The `(namespace, name)` of the VM whose domain is named `domain`; `None` for a domain
/// that is no VM's (a probe domain, one nodevirt did not define).
pub fn vm_of_domain(domain: &str) -> Option<(&str, &str)> {
    let (namespace, name) = domain.split_once('_')?;
    let label = |part| check_dns_label(part, "").is_ok();
    (label(namespace) && label(name)).then_some((namespace, name))
}

/// A DNS label (RFC 1123): 1-63 of a-z, 0-9 and '-', starting and ending alphanumeric.
pub fn check_dns_label(value: &str, field: &str) -> Result<(), FieldError> {
    check_length(value, DNS_LABEL_MAX_LEN, "a DNS label", field)?;
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a valid name; expected a DNS label: 1 to {DNS_LABEL_MAX_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// A DNS subdomain (RFC 1123): dot-separated DNS labels, at most 253 characters.
pub fn check_dns_subdomain(value: &str, field: &str) -> Result<(), FieldError> {
    check_length(value, DNS_SUBDOMAIN_MAX_LEN, "a DNS subdomain", field)?;
    let valid = !value.is_empty()
        && value
            .split('.')
            .all(|label| check_dns_label(label, field).is_ok());
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a valid name; expected a DNS subdomain: lowercase letters, digits, '-' and '.', at most {DNS_SUBDOMAIN_MAX_LEN} characters"
            ),
        ))
    }
}

/// A value of more than `max` characters is refused with its length, not echoed back whole.
/// `what` completes the message, e.g. "a DNS label" -> "64 characters; a DNS label has at
/// most 63".
pub fn check_length(value: &str, max: usize, what: &str, field: &str) -> Result<(), FieldError> {
    let length = value.chars().count();
    if length > max {
        return Err(FieldError::new(
            field,
            format!("{length} characters; {what} has at most {max}"),
        ));
    }
    Ok(())
}

/// A Kubernetes UID: the canonical UUID text form (it also names the VM's state folder).
pub fn check_uid(value: &str, field: &str) -> Result<(), FieldError> {
    let groups: Vec<&str> = value.split('-').collect();
    let valid = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                quoted(value)
            ),
        ))
    }
}

/// One of a fixed set of values, case-sensitive as in the API.
pub fn check_one_of<'a>(
    value: &str,
    allowed: &[&'a str],
    field: &str,
) -> Result<&'a str, FieldError> {
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!(
                    "unknown value {}; expected one of {}",
                    quoted(value),
                    allowed.join(", ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_map_back_to_vms() {
        assert_eq!(
            vm_of_domain(&domain_name("default", "testvm")),
            Some(("default", "testvm"))
        );
        let longest = domain_name(&"s".repeat(63), &"n".repeat(63));
        assert_eq!(
            vm_of_domain(&longest),
            Some((&*"s".repeat(63), &*"n".repeat(63)))
        );
        for other in ["no-underscore", "a_b_c", "_vm", "ns_", "Default_vm"] {
            assert_eq!(vm_of_domain(other), None, "{other}");
        }
        let probe = super::super::probe::probe_name("0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 0);
        assert_eq!(vm_of_domain(&probe), None, "a probe domain is no VM's");
    }

    #[test]
    fn dns_labels() {
        for good in ["a", "vm-1", "0abc", &"a".repeat(63)] {
            assert!(check_dns_label(good, "f").is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../../etc",
            "a b",
            &"a".repeat(64),
            "<x>",
        ] {
            let err = check_dns_label(bad, "metadata.name").unwrap_err();
            assert_eq!(err.field, "metadata.name");
        }
    }

    #[test]
    fn label_and_subdomain_lengths() {
        let label = "a".repeat(63);
        assert!(check_dns_label(&label, "f").is_ok());
        assert_eq!(
            check_dns_label(&"a".repeat(64), "metadata.name")
                .unwrap_err()
                .to_string(),
            "metadata.name: 64 characters; a DNS label has at most 63"
        );
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253.
        let subdomain = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(subdomain.len(), 253);
        assert!(check_dns_subdomain(&subdomain, "f").is_ok());
        assert_eq!(
            check_dns_subdomain(&format!("{subdomain}b"), "claimName")
                .unwrap_err()
                .to_string(),
            "claimName: 254 characters; a DNS subdomain has at most 253"
        );
        // Each label of a subdomain is a label: at most 63 too.
        assert!(check_dns_subdomain(&"a".repeat(64), "f").is_err());
    }

    #[test]
    fn a_huge_value_is_not_echoed_back() {
        let huge = "a".repeat(1 << 20);
        let err = check_dns_label(&huge, "metadata.name").unwrap_err();
        assert!(err.message.len() < 100, "{}", err.message);
        let err = check_uid(&huge, "metadata.uid").unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
        assert!(
            err.message.contains("(1048576 characters)"),
            "{}",
            err.message
        );
        let err = check_one_of(&huge, &["virtio"], "bus").unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
    }

    #[test]
    fn subdomains_and_uids() {
        assert!(check_dns_subdomain("claim.v1", "f").is_ok());
        assert!(check_dns_subdomain("a..b", "f").is_err());
        assert!(check_dns_subdomain("../x", "f").is_err());
        assert!(check_uid("0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "f").is_ok());
        for bad in [
            "",
            "../../etc",
            "0f9b6e2a1c2d4e5f8a9b0c1d2e3f4a5b",
            "zzzzzzzz-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        ] {
            assert!(check_uid(bad, "f").is_err(), "{bad}");
        }
    }

    #[test]
    fn one_of_names_allowed_values() {
        let err = check_one_of("usb2", &["virtio", "sata"], "bus").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bus: unknown value \"usb2\"; expected one of virtio, sata"
        );
    }
}
