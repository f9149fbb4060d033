//! libvirt's own checks of a domain XML.

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;

/// test:///default keeps one driver state per process: checks of domains with the same name
/// from parallel tests must not interleave.
static TEST_DRIVER: Mutex<()> = Mutex::new(());

/// The XML passes libvirt's schema (virt-xml-validate) and defineXML on the test driver.
pub fn accepted_by_libvirt(xml: &str) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(xml.as_bytes()).expect("write xml");
    let out = Command::new("virt-xml-validate")
        .arg(file.path())
        .arg("domain")
        .output()
        .expect("virt-xml-validate must be installed (libvirt-clients; hack/install-deps.sh)");
    assert!(
        out.status.success(),
        "virt-xml-validate refused:\n{}\n{}{}",
        xml,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _serial = TEST_DRIVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let conn = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    let defined = conn.define_domain_xml(xml);
    if let Ok(domain) = &defined {
        domain.undefine().expect("undefine");
    }
    drop(conn);
    if let Err(e) = defined {
        panic!("defineXML refused: {e}\n{xml}");
    }
}
