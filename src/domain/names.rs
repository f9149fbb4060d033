//! Checks for the names that reach libvirt, file names or labels.

use super::FieldError;

/// A DNS label (RFC 1123): 1-63 of a-z, 0-9 and '-', starting and ending alphanumeric.
pub fn check_dns_label(value: &str, field: &str) -> Result<(), FieldError> {
    let valid = !value.is_empty()
        && value.len() <= 63
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
                "{value:?} is not a valid name; expected a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// A DNS subdomain (RFC 1123): dot-separated DNS labels, at most 253 characters.
pub fn check_dns_subdomain(value: &str, field: &str) -> Result<(), FieldError> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value
            .split('.')
            .all(|label| check_dns_label(label, field).is_ok());
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a valid name; expected a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters"
            ),
        ))
    }
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
            format!("{value:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
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
                    "unknown value {value:?}; expected one of {}",
                    allowed.join(", ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
