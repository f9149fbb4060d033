//! The handshake-signature half of a rustls certificate verifier, written once. nodevirt's
//! verifiers (pinned fingerprints, the front proxy's allowed names) decide only which
//! certificate to trust; the peer must still prove it holds the certificate's key, checked as
//! webpki does. rustls asks that of both its verifier traits with the same three methods.

/// Inside `impl ServerCertVerifier` or `impl ClientCertVerifier`: the three signature
/// methods, checked with the algorithms in the field `$field`
/// (`rustls::crypto::WebPkiSupportedAlgorithms`).
#[macro_export]
macro_rules! handshake_signatures {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.$field)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.$field)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$field.supported_schemes()
        }
    };
}
