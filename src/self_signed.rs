//! The one way nodevirt makes a key and a self-signed certificate: for the metrics port when
//! no certificate is given, the pinned identities of the console tunnel, and the aggregated
//! API's serving certificate.

/// A new key and a certificate for `names` (subject alternative names), with `common_name`
/// for people reading it. `valid_days`: from an hour ago (clock skew) for that many days;
/// `None` leaves rcgen's open-ended validity, for certificates checked by pin, not by date.
pub fn generate(
    names: Vec<String>,
    common_name: &str,
    valid_days: Option<i64>,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    if let Some(days) = valid_days {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
    }
    let key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok((certificate, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_what_it_was_asked_for_and_lasts_as_long() {
        let (certificate, _) = generate(
            vec!["api.nodevirt.svc".into()],
            "api.nodevirt.svc",
            Some(30),
        )
        .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.der()).unwrap();
        let validity = parsed.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86400;
        assert_eq!(days, 30, "30 days and the hour of skew, rounded down");
        assert!(parsed.subject().to_string().contains("CN=api.nodevirt.svc"));
        let names = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", names.value.general_names),
            "[DNSName(\"api.nodevirt.svc\")]"
        );
    }
}
