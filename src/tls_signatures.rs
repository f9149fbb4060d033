//! The handshake-signature half of a rustls certificate verifier, written once. nodevirt's
//! verifiers (pinned fingerprints, the front proxy's allowed names) decide only which
//! certificate to trust; the peer must still prove it holds the certificate's key, checked as
//! webpki does. rustls asks that of both its verifier traits with the same three methods.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What checks handshake signatures: a set of algorithms, or a verifier wrapped.
pub trait SignatureCheck {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error>;
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error>;
    fn schemes(&self) -> Vec<SignatureScheme>;
}

impl SignatureCheck for WebPkiSupportedAlgorithms {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self)
    }
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self)
    }
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.supported_schemes()
    }
}

impl SignatureCheck for std::sync::Arc<dyn ClientCertVerifier> {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13_signature(message, cert, dss)
    }
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.supported_verify_schemes()
    }
}

/// Inside `impl ServerCertVerifier` or `impl ClientCertVerifier`: the three signature
/// methods, checked by the field `$field` (a [`SignatureCheck`]).
#[macro_export]
macro_rules! handshake_signatures {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            $crate::tls_signatures::SignatureCheck::tls12(&self.$field, message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            $crate::tls_signatures::SignatureCheck::tls13(&self.$field, message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            $crate::tls_signatures::SignatureCheck::schemes(&self.$field)
        }
    };
}
