//! What the fuzz targets (fuzz/, run by hack/fuzz.sh) and their stable replay
//! (tests/fuzz_corpus.rs) call: each takes the raw bytes a fuzzer made, runs them through the
//! real code path, and returns [`Bug`] only for an outcome the code must never produce.
//! Refusing an input with an error that names the field is the expected outcome, not a bug.
//!
//! - [`render_manifest_bytes`]: bytes -> YAML/JSON manifest (a VM, an OfflineVirtualMachine or
//!   a VirtualMachineReplicaSet; further documents after a `---` line are presets) ->
//!   `nodevirt render` with fixed flags -> the XML must be well-formed, with one `<domain>`
//!   root and only characters and references libvirt's parser accepts.
//! - [`AdminHarness::exchange`]: bytes -> one HTTP/1.1 connection to the admin socket's router
//!   over an in-memory stream -> the answer must come within [`ANSWER_DEADLINE`], be HTTP,
//!   and not be a 500. The harness is built once (a runtime, libvirt's in-process
//!   test:///default driver, a store with two VMs, a console log in a temporary state dir).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use quick_xml::events::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::server::{AdminState, router};
use crate::api::{VirtualMachine, VirtualMachineSpec};
use crate::cli::DomainTypeArg;
use crate::cli::manifest::Manifest;
use crate::cli::render::{RenderArgs, RenderError, render_manifest};
use crate::event_log::EventLog;
use crate::hypervisor::choice::{HypervisorChoice, HypervisorFlag};
use crate::hypervisor::{HypervisorError, Libvirt};
use crate::storage::layout::{DEFAULT_STATE_DIR, VmLayout};

/// An outcome the code must never produce, with what is needed to see why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Bug(String);

/// The name fuzz inputs go by in error messages.
pub const INPUT_NAME: &str = "fuzz-input.yaml";

/// A claim that renders as a block device, so inputs can reach the `lun` and block paths;
/// every other claim renders as a file under the state dir.
pub const BLOCK_CLAIM: &str = "block-claim";

/// What became of one input.
#[derive(Debug)]
pub enum RenderOutcome {
    /// Not UTF-8: no manifest reader gets that far.
    NotText,
    /// Refused with an error naming the input (and the field, once parsed).
    Refused(RenderError),
    /// Rendered; the XML passed [`check_domain_xml`].
    Rendered(String),
}

/// `nodevirt render fuzz-input.yaml --claim block-claim=/dev/nodevirt-fuzz`, on bytes.
pub fn render_manifest_bytes(data: &[u8]) -> Result<RenderOutcome, Bug> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(RenderOutcome::NotText);
    };
    let path = Path::new(INPUT_NAME);
    let args = RenderArgs {
        file: path.to_path_buf(),
        presets: Vec::new(),
        hypervisor: DomainTypeArg::Kvm,
        cpu_model: Default::default(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        network: "default".into(),
        claims: vec![(BLOCK_CLAIM.into(), PathBuf::from("/dev/nodevirt-fuzz"))],
    };
    let mut documents = documents(text).into_iter();
    let vm = documents.next().unwrap_or_default();
    let render = || -> Result<String, RenderError> {
        let vm = Manifest::from_text(path, vm)?;
        let presets = documents
            .map(|document| Manifest::from_text(path, document))
            .collect::<Result<Vec<_>, _>>()?;
        render_manifest(&vm, &presets, &args)
    };
    let result = render();
    match result {
        Ok(xml) => {
            check_domain_xml(&xml)?;
            Ok(RenderOutcome::Rendered(xml))
        }
        Err(refused) => {
            // Every message is printed to a user: formatting it must not fail either.
            let _ = refused.to_string();
            Ok(RenderOutcome::Refused(refused))
        }
    }
}

/// The YAML documents of `text`, split at `---` lines; blank ones are left out.
fn documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else if let Some(last) = documents.last_mut() {
            last.push_str(line);
        }
    }
    documents.retain(|d| !d.trim().is_empty());
    documents
}

/// The XML is one `<domain>` element, well-formed, with only the characters XML 1.0 allows
/// and only predefined entity or character references, as libvirt's parser (libxml2)
/// requires.
pub fn check_domain_xml(xml: &str) -> Result<(), Bug> {
    let bug = |what: String| Bug(format!("{what}\n--- XML ---\n{xml}"));
    if let Some(c) = xml.chars().find(|c| !is_xml_char(*c)) {
        return Err(bug(format!("character {c:?} is not allowed in XML 1.0")));
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| {
            bug(format!(
                "not well-formed at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        let element = match &event {
            Event::Start(e) | Event::Empty(e) => Some(e),
            _ => None,
        };
        if let Some(element) = element {
            if depth == 0 {
                roots += 1;
                if element.name().as_ref() != "domain" || matches!(event, Event::Empty(_)) {
                    return Err(bug("the root is not a <domain> element".into()));
                }
            }
            for attribute in element.attributes() {
                attribute
                    .map_err(|e| bug(format!("bad attribute: {e}")))?
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| bug(format!("bad attribute value: {e}")))?;
            }
        }
        match &event {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::GeneralRef(reference) => {
                let known = match reference.resolve_char_ref() {
                    Ok(Some(c)) => is_xml_char(c),
                    Ok(None) => {
                        quick_xml::escape::resolve_predefined_entity(reference.as_ref()).is_some()
                    }
                    Err(_) => false,
                };
                if !known {
                    return Err(bug(format!(
                        "reference &{}; is not one libvirt can resolve",
                        reference.as_ref()
                    )));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if roots != 1 || depth != 0 {
        return Err(bug(format!(
            "{roots} root elements, {depth} left open; expected one <domain>"
        )));
    }
    Ok(())
}

/// XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// How long one exchange with the admin router may take; libvirt's test driver and the
/// in-memory stream answer in microseconds, so running out means something hangs.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The libvirt the harness answers from: in-process, no daemon.
pub const HARNESS_LIBVIRT_URI: &str = "test:///default";

/// A VM the harness's store holds, with a console log of a few lines.
pub const HARNESS_VM: (&str, &str) = ("default", "testvm");
const HARNESS_VM_UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
/// A second VM whose UID is not a UUID, as a hand-edited object could have.
pub const HARNESS_BAD_UID_VM: (&str, &str) = ("default", "baduid");

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("starting the tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("opening {HARNESS_LIBVIRT_URI}")]
    Libvirt(#[source] HypervisorError),
    #[error("preparing the state dir")]
    StateDir(#[source] std::io::Error),
}

/// The admin socket's router with the state an agent would give it, answering one connection
/// per [`AdminHarness::exchange`]. Built once: an exchange costs microseconds.
pub struct AdminHarness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _writer: Writer<VirtualMachine>,
    _state_dir: tempfile::TempDir,
}

impl AdminHarness {
    pub fn new() -> Result<Self, HarnessError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HarnessError::Runtime)?;
        let libvirt = Libvirt::open(HARNESS_LIBVIRT_URI).map_err(HarnessError::Libvirt)?;
        let state_dir = tempfile::tempdir().map_err(HarnessError::StateDir)?;
        let layout = VmLayout::new(state_dir.path(), HARNESS_VM_UID);
        std::fs::create_dir_all(layout.dir()).map_err(HarnessError::StateDir)?;
        // CRLF line ends and bytes that are not UTF-8, as a guest prints them.
        let console = b"booting\r\nnodevirt-guest: hello\r\n\xff\xfe not utf-8\nlast line";
        std::fs::write(layout.console_log(), console).map_err(HarnessError::StateDir)?;

        let (vms, mut writer) = reflector::store::<VirtualMachine>();
        let events = Arc::new(EventLog::default());
        for ((namespace, name), uid) in [
            (HARNESS_VM, HARNESS_VM_UID),
            (HARNESS_BAD_UID_VM, "../../etc"),
        ] {
            let mut vm = VirtualMachine::new(name, VirtualMachineSpec::default());
            vm.metadata.namespace = Some(namespace.into());
            vm.metadata.uid = Some(uid.into());
            writer.apply_watcher_event(&watcher::Event::Apply(vm));
            events.record(uid, "Normal", "Created", "defined the domain");
        }
        let (_, synced) = tokio::sync::watch::channel(true);
        let (resync, mut resync_rx) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(async move { while resync_rx.recv().await.is_some() {} });
        let state = Arc::new(AdminState {
            node: "fuzz-node".into(),
            libvirt: Arc::new(libvirt),
            vms,
            synced,
            state_dir: state_dir.path().to_path_buf(),
            resync,
            events,
            hypervisor: Arc::new(HypervisorChoice::new(HypervisorFlag::Qemu)),
            keepalive: crate::tunnel::Keepalive {
                interval: crate::tunnel::DEFAULT_KEEPALIVE,
            },
            sessions: crate::admin::attach::SessionLimit::new(4),
        });
        Ok(Self {
            runtime,
            router: router(state),
            _writer: writer,
            _state_dir: state_dir,
        })
    }

    /// Writes `request` to a new connection, closes the writing side, and returns all the
    /// server wrote until it closed the connection.
    pub fn exchange(&self, request: &[u8]) -> Result<Vec<u8>, Bug> {
        self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let service = TowerToHyperService::new(self.router.clone());
            let connection = tokio::spawn(async move {
                hyper::server::conn::http1::Builder::new()
                    // A client may close its side once the request is sent.
                    .half_close(true)
                    .serve_connection(TokioIo::new(server), service)
                    .await
            });
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let write = async {
                // The server may close first (a bad request): writing then fails, harmlessly.
                let _ = to_server.write_all(request).await;
                let _ = to_server.shutdown().await;
            };
            let read = async {
                let mut response = Vec::new();
                from_server
                    .read_to_end(&mut response)
                    .await
                    .map(|_| response)
            };
            let deadline = |what: &str| {
                Bug(format!(
                    "{what} within {ANSWER_DEADLINE:?}; request: {:?}",
                    String::from_utf8_lossy(request)
                ))
            };
            let ((), response) =
                tokio::time::timeout(ANSWER_DEADLINE, async { tokio::join!(write, read) })
                    .await
                    .map_err(|_| deadline("the connection did not close"))?;
            let response = response.map_err(|e| Bug(format!("reading the answer: {e}")))?;
            // A request hyper cannot parse ends the connection with an error: that is fine.
            let _ = tokio::time::timeout(ANSWER_DEADLINE, connection)
                .await
                .map_err(|_| deadline("the server did not finish"))?
                .map_err(|e| Bug(format!("the connection's task failed: {e}")))?;
            check_answer(request, &response)?;
            Ok(response)
        })
    }
}

/// No answer (hyper may just close), or HTTP whose first status is not a 500.
fn check_answer(request: &[u8], response: &[u8]) -> Result<(), Bug> {
    if response.is_empty() {
        return Ok(());
    }
    let bug = |what: &str| {
        Bug(format!(
            "{what}\nrequest: {:?}\nanswer: {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(response)
        ))
    };
    let status = response
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| response.strip_prefix(b"HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .ok_or_else(|| bug("the answer is not HTTP/1"))?;
    if status == b"500" {
        return Err(bug("500 Internal Server Error"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separator_lines() {
        assert_eq!(documents("a: 1\n---\nb: 2\n"), ["a: 1\n", "b: 2\n"]);
        assert_eq!(documents("---\na: 1\n--- \n\n"), ["a: 1\n"]);
        assert!(documents("").is_empty());
        assert_eq!(documents("a: '---'"), ["a: '---'"]);
    }

    #[test]
    fn domain_xml_checks() {
        assert!(check_domain_xml("<domain><name>a&amp;b&#x41;</name></domain>").is_ok());
        for bad in [
            "",
            "<domain/>",
            "<domain></domain><domain></domain>",
            "<domain><name></domain>",
            "<domain>\u{1}</domain>",
            "<domain>&nbsp;</domain>",
            "<domain>&#1;</domain>",
            "<domain a=\"&bogus;\"></domain>",
            "<other></other>",
        ] {
            assert!(check_domain_xml(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_and_binary_inputs_are_refused_not_bugs() {
        assert!(matches!(
            render_manifest_bytes(b"\xff\xfe"),
            Ok(RenderOutcome::NotText)
        ));
        for input in ["", "---\n", "null", "[]", "{kind: VirtualMachine}"] {
            assert!(
                matches!(
                    render_manifest_bytes(input.as_bytes()),
                    Ok(RenderOutcome::Refused(_))
                ),
                "{input:?}"
            );
        }
    }
}
