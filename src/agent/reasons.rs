//! Condition and event reasons, in one place so docs/troubleshooting.md can list them all.

// Condition reasons.
pub const RUNNING: &str = "Running";
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const MISSING_INPUT: &str = "MissingInput";
pub const STORAGE_FAILED: &str = "StorageFailed";
pub const DEFINE_FAILED: &str = "DefineFailed";
pub const START_FAILED: &str = "StartFailed";
pub const SHUT_DOWN: &str = "ShutDown";
pub const CRASHED: &str = "Crashed";
pub const DESTROYED: &str = "DestroyedOutsideAgent";
pub const DOMAIN_LOST: &str = "DomainLost";
/// The guest's watchdog stopped it; also the event of a firing that did not.
pub const WATCHDOG_FIRED: &str = "WatchdogFired";
/// Not a failure: the VM waits for its holder pod on this node.
pub const WAITING_FOR_POD: &str = "WaitingForHolderPod";

// Event reasons, as in the API text's `kubectl describe` (component nodevirt-agent).
pub const EVENT_CREATED: &str = "Created";
pub const EVENT_STARTED: &str = "Started";
pub const EVENT_STOPPED: &str = "Stopped";
pub const EVENT_SHUTTING_DOWN: &str = "ShuttingDown";
pub const EVENT_DELETED: &str = "Deleted";
pub const EVENT_SYNC_FAILED: &str = "SyncFailed";
pub const EVENT_FAILED: &str = "Failed";
