//! Clock, timers, features and watchdog: spec.domain fields with a direct libvirt element.

use crate::api::domain_spec::{self as spec, FeatureState};
use crate::api::quoted;

use super::FieldError;
use super::limits::{
    MAX_CLOCK_OFFSET_SECONDS, MAX_TIMEZONE_LEN, MAX_VENDOR_ID_LEN, MIN_SPINLOCK_RETRIES,
};
use super::model::{
    Apic, Clock, Features, Flag, Hyperv, OnOff, Spinlocks, State, Timer, VendorId, Watchdog, YesNo,
};
use super::names::{check_length, check_one_of};
use super::values::{RTC_TRACKS, TICK_POLICIES, WATCHDOG_ACTIONS};

const DEFAULT_SPINLOCK_RETRIES: u32 = 4096;

pub fn clock(clock: Option<&spec::Clock>) -> Result<Clock, FieldError> {
    let field = "spec.domain.clock";
    let mut out = Clock {
        offset: "utc",
        adjustment: None,
        basis: None,
        timezone: None,
        timers: Vec::new(),
    };
    let Some(clock) = clock else { return Ok(out) };
    match (&clock.timezone, &clock.utc) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                field,
                "set either timezone or utc, not both",
            ));
        }
        (Some(tz), None) => {
            check_timezone(tz, &format!("{field}.timezone"))?;
            out.offset = "timezone";
            out.timezone = Some(tz.clone());
        }
        (None, Some(utc)) => {
            if let Some(seconds) = utc.offset_seconds {
                if seconds.unsigned_abs() > MAX_CLOCK_OFFSET_SECONDS.unsigned_abs() {
                    return Err(FieldError::new(
                        format!("{field}.utc.offsetSeconds"),
                        format!(
                            "{seconds} seconds; expected at most {MAX_CLOCK_OFFSET_SECONDS} (100 years) either way"
                        ),
                    ));
                }
                out.offset = "variable";
                out.adjustment = Some(seconds);
                out.basis = Some("utc");
            }
        }
        (None, None) => {}
    }
    if let Some(timers) = &clock.timer {
        out.timers = self::timers(timers, &format!("{field}.timer"))?;
    }
    Ok(out)
}

fn check_timezone(tz: &str, field: &str) -> Result<(), FieldError> {
    check_length(tz, MAX_TIMEZONE_LEN, "a timezone name", field)?;
    let valid = !tz.is_empty()
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !tz.split('/').any(|part| part.is_empty() || part == "..");
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{tz:?} is not a timezone name; expected an IANA name such as \"Europe/Paris\""
            ),
        ))
    }
}

fn timers(timers: &spec::Timers, field: &str) -> Result<Vec<Timer>, FieldError> {
    let tick = |policy: &Option<String>, name: &str| {
        policy
            .as_deref()
            .map(|p| check_one_of(p, TICK_POLICIES, &format!("{field}.{name}.tickPolicy")))
            .transpose()
    };
    let timer = |name, present: Option<bool>| Timer {
        name,
        present: present.map(YesNo::from),
        tick_policy: None,
        track: None,
    };
    let mut out = Vec::new();
    if let Some(hpet) = &timers.hpet {
        out.push(Timer {
            tick_policy: tick(&hpet.tick_policy, "hpet")?.map(String::from),
            ..timer("hpet", hpet.present)
        });
    }
    if let Some(hyperv) = &timers.hyperv {
        out.push(timer("hypervclock", hyperv.present));
    }
    if let Some(kvm) = &timers.kvm {
        out.push(timer("kvmclock", kvm.present));
    }
    if let Some(pit) = &timers.pit {
        out.push(Timer {
            tick_policy: tick(&pit.tick_policy, "pit")?.map(String::from),
            ..timer("pit", pit.present)
        });
    }
    if let Some(rtc) = &timers.rtc {
        let track = rtc
            .track
            .as_deref()
            .map(|t| check_one_of(t, RTC_TRACKS, &format!("{field}.rtc.track")))
            .transpose()?;
        out.push(Timer {
            tick_policy: tick(&rtc.tick_policy, "rtc")?.map(String::from),
            track: track.map(String::from),
            ..timer("rtc", rtc.present)
        });
    }
    Ok(out)
}

/// A feature that is present is on unless it says `enabled: false`.
fn enabled(state: Option<bool>) -> bool {
    state.unwrap_or(true)
}

fn switch(feature: &Option<FeatureState>) -> Option<State> {
    feature.as_ref().map(|f| State {
        state: enabled(f.enabled).into(),
    })
}

pub fn features(features: Option<&spec::Features>) -> Result<Features, FieldError> {
    let field = "spec.domain.features";
    let default = spec::Features::default();
    let features = features.unwrap_or(&default);
    let acpi_on = features.acpi.as_ref().is_none_or(|a| enabled(a.enabled));
    let apic = features
        .apic
        .as_ref()
        .filter(|a| enabled(a.enabled))
        .map(|a| Apic {
            eoi: a.end_of_interrupt.map(OnOff::from),
        });
    let hyperv = features
        .hyperv
        .as_ref()
        .map(|h| hyperv(h, &format!("{field}.hyperv")))
        .transpose()?;
    Ok(Features {
        acpi: acpi_on.then_some(Flag {}),
        apic,
        hyperv,
    })
}

fn hyperv(h: &spec::FeatureHyperv, field: &str) -> Result<Hyperv, FieldError> {
    let spinlocks = match &h.spinlocks {
        None => None,
        Some(s) => {
            let on = enabled(s.enabled);
            let retries = s.spinlocks.unwrap_or(DEFAULT_SPINLOCK_RETRIES);
            if on && retries < MIN_SPINLOCK_RETRIES {
                return Err(FieldError::new(
                    format!("{field}.spinlocks.spinlocks"),
                    format!("{retries} is too small; expected at least {MIN_SPINLOCK_RETRIES}"),
                ));
            }
            Some(Spinlocks {
                state: on.into(),
                retries: on.then_some(retries),
            })
        }
    };
    let vendor_id = match &h.vendorid {
        None => None,
        Some(v) => {
            let on = enabled(v.enabled);
            let value = v.vendorid.clone().unwrap_or_default();
            let vendor_field = format!("{field}.vendorid.vendorid");
            if on && (value.is_empty() || value.len() > MAX_VENDOR_ID_LEN) {
                return Err(FieldError::new(
                    vendor_field,
                    format!(
                        "{} must be 1 to {MAX_VENDOR_ID_LEN} characters",
                        quoted(&value)
                    ),
                ));
            }
            if !value.is_ascii() || value.bytes().any(|b| b.is_ascii_control()) {
                return Err(FieldError::new(
                    vendor_field,
                    "expected printable ASCII characters only",
                ));
            }
            Some(VendorId {
                state: on.into(),
                value: on.then_some(value),
            })
        }
    };
    Ok(Hyperv {
        relaxed: switch(&h.relaxed),
        vapic: switch(&h.vapic),
        spinlocks,
        vpindex: switch(&h.vpindex),
        runtime: switch(&h.runtime),
        synic: switch(&h.synic),
        stimer: switch(&h.synictimer),
        reset: switch(&h.reset),
        vendor_id,
    })
}

/// The watchdog may sit at spec.domain.watchdog (the API text) or spec.domain.devices.watchdog
/// (KubeVirt's reference); one of the two.
pub fn watchdog(domain: &spec::DomainSpec) -> Result<Option<Watchdog>, FieldError> {
    let in_devices = domain.devices.as_ref().and_then(|d| d.watchdog.as_ref());
    let (watchdog, field) = match (&domain.watchdog, in_devices) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "spec.domain.watchdog",
                "also set at spec.domain.devices.watchdog; set the watchdog in one place",
            ));
        }
        (Some(w), None) => (w, "spec.domain.watchdog"),
        (None, Some(w)) => (w, "spec.domain.devices.watchdog"),
        (None, None) => return Ok(None),
    };
    let Some(esb) = &watchdog.i6300esb else {
        return Err(FieldError::new(
            field,
            "no watchdog model; expected i6300esb",
        ));
    };
    let action = match esb.action.as_deref() {
        None => "reset",
        Some(a) => check_one_of(a, WATCHDOG_ACTIONS, &format!("{field}.i6300esb.action"))?,
    };
    Ok(Some(Watchdog {
        model: "i6300esb",
        action,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{render_vm, vm};
    use super::super::limits::{MAX_CLOCK_OFFSET_SECONDS, MAX_TIMEZONE_LEN};

    fn with_timezone(tz: &str) -> String {
        format!("{{resources: {{requests: {{memory: 64Mi}}}}, clock: {{timezone: {tz}}}}}")
    }

    #[test]
    fn clock_offsets_up_to_the_limit() {
        let offset = |seconds: i64| {
            let domain = format!(
                "{{resources: {{requests: {{memory: 64Mi}}}}, clock: {{utc: {{offsetSeconds: {seconds}}}}}}}"
            );
            render_vm(&vm(&domain, "[]"))
        };
        for at_limit in [MAX_CLOCK_OFFSET_SECONDS, -MAX_CLOCK_OFFSET_SECONDS] {
            assert_eq!(offset(at_limit).unwrap().clock.adjustment, Some(at_limit));
        }
        for over in [MAX_CLOCK_OFFSET_SECONDS + 1, i64::MIN] {
            let err = offset(over).unwrap_err();
            assert_eq!(err.field, "spec.domain.clock.utc.offsetSeconds", "{err}");
        }
    }

    #[test]
    fn timezone_names_up_to_the_limit() {
        let name = |length: usize| format!("Europe/{}", "x".repeat(length - 7));
        assert!(render_vm(&vm(&with_timezone(&name(MAX_TIMEZONE_LEN)), "[]")).is_ok());
        let err = render_vm(&vm(&with_timezone(&name(MAX_TIMEZONE_LEN + 1)), "[]")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.domain.clock.timezone: 65 characters; a timezone name has at most 64"
        );
    }
}
