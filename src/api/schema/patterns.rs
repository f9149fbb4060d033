//! The `pattern` of each string field the renderer or the agent checks, so the apiserver
//! refuses at `kubectl apply` what they would refuse later; the tests below run each pattern
//! against the Rust check it stands for.

/// A DNS label (RFC 1123), as `domain::names::check_dns_label` checks it; with
/// `maxLength: 63`.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS subdomain (RFC 1123): dot-separated DNS labels of at most 63 characters each, as
/// `domain::names::check_dns_subdomain` checks it; with `maxLength: 253`.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// A QEMU machine type, as the renderer accepts it (`pc-q35-9.2`).
pub const MACHINE_TYPE_PATTERN: &str = "^[A-Za-z0-9._-]+$";

/// An IANA timezone name, as the renderer accepts it: `/`-separated parts of letters, digits,
/// `_`, `+` and `-`.
pub const TIMEZONE_PATTERN: &str = "^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$";

/// An image reference: no whitespace or control characters (the registry client parses the
/// rest).
pub const IMAGE_REFERENCE_PATTERN: &str = r"^[^\x00-\x20\x7f]+$";

/// A UUID in its canonical text form, as `domain::names::check_uid` checks it:
/// `firmware.uuid`.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Printable ASCII: the Hyper-V vendor id.
pub const PRINTABLE_ASCII_PATTERN: &str = "^[ -~]*$";

/// Base64 as the agent decodes `userDataBase64`: the standard alphabet, canonical padding and
/// no stray bits in the last symbol, surrounding whitespace ignored.
pub const BASE64_PATTERN: &str =
    r"^\s*([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?\s*$";

/// Whitespace allowed around `userDataBase64` beyond its encoded length (a YAML block
/// scalar's newline, some indentation); only the decoded size is a limit.
pub const BASE64_WHITESPACE_ALLOWANCE: usize = 64;

/// The length of the base64 text (padded) of `bytes` bytes.
pub const fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// CEL: the number of bytes the base64 string `expr` (already matching [`BASE64_PATTERN`])
/// decodes to.
pub fn base64_decoded_size(expr: &str) -> String {
    format!(
        "size({expr}.trim()) / 4 * 3 - ({expr}.trim().endsWith('==') ? 2 : ({expr}.trim().endsWith('=') ? 1 : 0))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineSpec;
    use crate::domain::limits::DNS_LABEL_MAX_LEN;
    use crate::domain::names::{check_dns_label, check_dns_subdomain};

    /// The patterns accept what the renderer's checks accept, and nothing else.
    #[test]
    fn patterns_agree_with_the_renderers_checks() {
        let matches =
            |pattern: &str, value: &str| regex::Regex::new(pattern).unwrap().is_match(value);
        let label63 = "a".repeat(63);
        let labels = [
            "a", "vm-1", "0abc", &label63, "", "-a", "a-", "A", "a_b", "a.b", "a b", "../x", "é",
            "a\n",
        ];
        for value in labels {
            assert_eq!(
                matches(DNS_LABEL_PATTERN, value) && value.len() <= DNS_LABEL_MAX_LEN,
                check_dns_label(value, "f").is_ok(),
                "label {value:?}"
            );
        }
        let long_label = format!("{}.b", "a".repeat(64));
        for value in labels
            .into_iter()
            .chain(["claim.v1", "a..b", ".a", "a.", &long_label])
        {
            assert_eq!(
                matches(DNS_SUBDOMAIN_PATTERN, value),
                check_dns_subdomain(value, "f").is_ok(),
                "subdomain {value:?}"
            );
        }
    }

    #[test]
    fn the_base64_pattern_and_size_are_the_agents_decoding() {
        use base64::Engine as _;
        let pattern = regex::Regex::new(BASE64_PATTERN).unwrap();
        let decodes = |text: &str| {
            let source = crate::api::volume::CloudInitNoCloudSource {
                user_data_base64: Some(text.into()),
                ..Default::default()
            };
            source.decoded_user_data_base64().is_some_and(|d| d.is_ok())
        };
        let mut samples: Vec<String> = [
            "",
            "eA==",
            "eB==",
            "eHk=",
            "eHl=",
            "eHl6",
            "eA=",
            "eA",
            "e===",
            " eA==\n",
            "eA==\neA==",
            "not base64!",
            "eA==eA==",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in 0..12 {
            samples.push(base64::engine::general_purpose::STANDARD.encode(vec![0xa5u8; n]));
        }
        for sample in &samples {
            assert_eq!(pattern.is_match(sample), decodes(sample), "{sample:?}");
        }
        // The decoded size rule's arithmetic: n / 4 * 3 minus the padding.
        for n in 0..12usize {
            let text = base64::engine::general_purpose::STANDARD.encode(vec![1u8; n]);
            let padding = text.len() - text.trim_end_matches('=').len();
            assert_eq!(text.len() / 4 * 3 - padding, n);
            assert!(text.len() <= base64_len(n));
        }
    }

    /// Whether the renderer takes the smallest VM changed by `change`.
    fn renders(change: impl FnOnce(&mut VirtualMachineSpec)) -> bool {
        let mut vm: crate::api::VirtualMachine = serde_yaml::from_str(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: vm}\n\
             spec: {domain: {resources: {requests: {memory: 64Mi}}}}\n",
        )
        .unwrap();
        change(&mut vm.spec);
        let options = crate::domain::RenderOptions {
            domain_type: crate::domain::DomainType::Qemu,
            cpu_model: Default::default(),
            network: None,
            console_log: "/dev/null".into(),
            node: None,
        };
        crate::domain::render(&vm, &Default::default(), &options).is_ok()
    }

    /// `pattern` matches exactly the `values` that the renderer takes once `set` puts them in
    /// the smallest VM.
    fn agrees_with_renderer(
        what: &str,
        pattern: &str,
        values: &[&str],
        set: impl Fn(&mut VirtualMachineSpec, &str),
    ) {
        let pattern = regex::Regex::new(pattern).unwrap();
        for value in values {
            assert_eq!(
                pattern.is_match(value),
                renders(|spec| set(spec, value)),
                "{what} {value:?}"
            );
        }
    }

    #[test]
    fn the_other_patterns_agree_with_the_renderer() {
        use crate::api::domain_spec::{
            Clock, FeatureHyperv, FeatureVendorId, Features, Firmware, Machine,
        };
        agrees_with_renderer(
            "firmware uuid",
            UUID_PATTERN,
            &[
                "6a1a24a1-4061-11e8-b62a-0242ac110003",
                "6A1A24A1-4061-11E8-B62A-0242AC110003",
                "",
                "6a1a24a1406111e8b62a0242ac110003",
                "6a1a24a1-4061-11e8-b62a-0242ac11000",
                "6a1a24a1-4061-11e8-b62a-0242ac1100033",
                "g a1a24a1-4061-11e8-b62a-0242ac110003",
                " 6a1a24a1-4061-11e8-b62a-0242ac110003",
            ],
            |spec, uuid| {
                spec.domain.firmware = Some(Firmware {
                    uuid: Some(uuid.into()),
                })
            },
        );
        use crate::api::volume::{RegistryDiskSource, Volume};
        agrees_with_renderer(
            "machine",
            MACHINE_TYPE_PATTERN,
            &[
                "q35",
                "pc-q35-9.2",
                "pc_1",
                "",
                "q35 ",
                "q35;reboot",
                "q35/x",
                "é",
            ],
            |spec, machine| {
                spec.domain.machine = Some(Machine {
                    machine_type: machine.into(),
                })
            },
        );
        agrees_with_renderer(
            "timezone",
            TIMEZONE_PATTERN,
            &[
                "Europe/Paris",
                "Etc/GMT+1",
                "UTC",
                "America/Port-au-Prince",
                "",
                "Europe//Paris",
                "/etc",
                "../x",
                "Europe/",
                "a b",
                "Europe/Paris\n",
            ],
            |spec, timezone| {
                spec.domain.clock = Some(Clock {
                    timezone: Some(timezone.into()),
                    ..Default::default()
                })
            },
        );
        agrees_with_renderer(
            "image",
            IMAGE_REFERENCE_PATTERN,
            &[
                "reg.example/a:1",
                "reg.example/a@sha256:00",
                "",
                "a b",
                "a\tb",
                "a\u{7f}",
                "a\u{1}",
                "reg.example/é:1",
            ],
            |spec, image| {
                spec.volumes = vec![Volume {
                    name: "v".into(),
                    registry_disk: Some(RegistryDiskSource {
                        image: image.into(),
                        image_pull_secret: None,
                    }),
                    ..Default::default()
                }]
            },
        );
        agrees_with_renderer(
            "vendor id",
            PRINTABLE_ASCII_PATTERN,
            &["KVMKVMKVM", "Micro soft", "", "é", "a\n", "a\u{7}"],
            |spec, vendor| {
                spec.domain.features = Some(Features {
                    hyperv: Some(FeatureHyperv {
                        vendorid: Some(FeatureVendorId {
                            enabled: Some(false),
                            vendorid: Some(vendor.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
        );
    }
}
