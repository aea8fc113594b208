//! CronJob schedules, read exactly as Kubernetes reads them, so a manifest
//! accepted (or rejected) by a Kubernetes API server is accepted (or
//! rejected) here with the same message.
//!
//! Kubernetes parses `spec.schedule` with the "standard" parser of
//! robfig/cron: five fields (minute, hour, day of month, month, day of
//! week), each a comma-separated list of `*`/`?`, values, `a-b` ranges and
//! `/step`s, with the names `JAN`–`DEC` and `SUN`–`SAT` (any case), or one
//! of the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly` and `@every <duration>`. When both day
//! fields are restricted a day matches if *either* does (Vixie cron's rule);
//! when one is `*` (or `?`) both must. Day of week is `0`–`6` (`7` is
//! rejected, as robfig does).
//!
//! Times are computed in the CronJob's `timeZone` (IANA names, looked up in
//! the system's zoneinfo through jiff) and in UTC when none is given (where
//! Kubernetes would use the controller manager's local zone, which is UTC
//! in nearly every cluster; a manifest should not mean different things on
//! different machines). Across a daylight-saving gap a time that does not
//! exist runs shifted by the gap (02:30 becomes 03:30); a time that
//! happens twice runs once, at its first occurrence.
//!
//! Everything here is pure: the caller passes the times, so the schedule
//! logic is tested without a clock.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// Kubernetes' message when the schedule names a time zone itself.
pub const TZ_IN_SCHEDULE_MESSAGE: &str =
    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead";

/// More missed start times than this and only the most recent is looked
/// at, with a warning (Kubernetes' bound, so a clock that jumped by years
/// does not make the controller enumerate every minute in between).
pub const TOO_MANY_MISSED: u64 = 100;

/// How far ahead a schedule is searched for its next time; a schedule
/// that never fires (`0 0 30 2 *`) has none (robfig's bound).
const SEARCH_YEARS: i16 = 5;

/// Why a schedule does not parse. The messages are robfig/cron's, which
/// Kubernetes shows as `spec.schedule: Invalid value: "<schedule>": <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule is the empty string.
    #[error("empty spec string")]
    Empty,
    /// Not five fields.
    #[error("expected exactly 5 fields, found {found}: [{}]", fields.join(" "))]
    FieldCount {
        /// How many fields there were.
        found: usize,
        /// The fields, as split on whitespace.
        fields: Vec<String>,
    },
    /// A `@word` that is not a descriptor.
    #[error("unrecognized descriptor: {0}")]
    UnknownDescriptor(String),
    /// `@every` with a duration Go's `time.ParseDuration` rejects.
    #[error("failed to parse duration {input}: time: {why} {input:?}")]
    Duration {
        /// The duration text.
        input: String,
        /// Go's reason (`invalid duration`, `missing unit in duration`, …).
        why: String,
    },
    /// A value that is neither a number nor a name of the field.
    #[error("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: {why}")]
    NotANumber {
        /// The text that should have been a number.
        expr: String,
        /// `invalid syntax` or `value out of range`, as Go says.
        why: &'static str,
    },
    /// A negative number.
    #[error("negative number ({value}) not allowed: {expr}")]
    Negative {
        /// The number.
        value: i64,
        /// The text it came from.
        expr: String,
    },
    /// `a-b-c`.
    #[error("too many hyphens: {0}")]
    TooManyHyphens(String),
    /// `a/b/c`.
    #[error("too many slashes: {0}")]
    TooManySlashes(String),
    /// A range starting below the field's minimum.
    #[error("beginning of range ({start}) below minimum ({min}): {expr}")]
    BelowMinimum {
        /// The start of the range.
        start: u64,
        /// The field's minimum.
        min: u64,
        /// The expression.
        expr: String,
    },
    /// A range ending above the field's maximum.
    #[error("end of range ({end}) above maximum ({max}): {expr}")]
    AboveMaximum {
        /// The end of the range.
        end: u64,
        /// The field's maximum.
        max: u64,
        /// The expression.
        expr: String,
    },
    /// `b-a` with `b > a`.
    #[error("beginning of range ({start}) beyond end of range ({end}): {expr}")]
    Backwards {
        /// The start of the range.
        start: u64,
        /// The end of the range.
        end: u64,
        /// The expression.
        expr: String,
    },
    /// `/0`.
    #[error("step of range should be a positive number: {0}")]
    ZeroStep(String),
    /// `TZ=<zone>` (or `CRON_TZ=`) naming no known zone.
    #[error("provided bad location {0}: unknown time zone {0}")]
    BadLocation(String),
}

/// Why a `timeZone` is not accepted, with Kubernetes' messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeZoneError {
    /// `timeZone: ""`.
    #[error("timeZone must be nil or non-empty string")]
    Empty,
    /// `Local`, which would depend on the machine.
    #[error(
        "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
    )]
    Local,
    /// No such IANA zone.
    #[error("unknown time zone {0}")]
    Unknown(String),
}

/// One field's allowed values, as a bit set (bit `n` = value `n`), and
/// whether it was written as `*`/`?` (which changes how the day fields
/// combine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(self, v: u64) -> bool {
        v < 64 && self.bits & (1 << v) != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Fields(Fields),
    /// `@every`: a fixed interval in whole seconds (at least one).
    Every(i64),
}

/// A parsed schedule in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    spec: Spec,
    tz: TimeZone,
    /// Whether the text started with `TZ=`/`CRON_TZ=` (parsed, as robfig
    /// does, but refused by validation in favour of `timeZone`).
    tz_prefix: bool,
}

/// What [`CronSchedule::missed`] found between the last run and now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The most recent schedule time in `(earliest, now]`, if any.
    pub most_recent: Option<Timestamp>,
    /// How many schedule times fell in that window, counted up to
    /// [`TOO_MANY_MISSED`] + 1.
    pub count: u64,
}

impl Missed {
    /// Whether so many start times were missed that Kubernetes warns
    /// ("too many missed start times") and looks only at the latest.
    pub fn too_many(&self) -> bool {
        self.count > TOO_MANY_MISSED
    }
}

struct Bounds {
    min: u64,
    max: u64,
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// Whether a schedule names its time zone (`TZ=…`/`CRON_TZ=…`), which
/// Kubernetes refuses: the `timeZone` field says it instead. Kubernetes
/// checks for the text `TZ` anywhere, and so does this.
pub fn names_time_zone(schedule: &str) -> bool {
    schedule.contains("TZ")
}

/// Looks up a `timeZone` as Kubernetes validates it: an exact IANA name
/// (case matters, as it does for Go on Linux), never `Local`.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, TimeZoneError> {
    if name.is_empty() {
        return Err(TimeZoneError::Empty);
    }
    let unknown = || TimeZoneError::Unknown(name.to_string());
    for part in name.split('/') {
        let ok_chars = !part.is_empty()
            && part.len() <= 14
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
        if part == "." || part == ".." || part.starts_with('-') || !ok_chars {
            return Err(unknown());
        }
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(TimeZoneError::Local);
    }
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    let tz = TimeZone::get(name).map_err(|_| unknown())?;
    // jiff finds names in any case; Go (and so Kubernetes) does not.
    match tz.iana_name() {
        Some(found) if found == name => Ok(tz),
        _ => Err(unknown()),
    }
}

/// A time as Go's RFC 3339 layout prints it in `tz`: whole seconds, `Z`
/// for a zero offset, `+hh:mm` otherwise. This is the form of the
/// `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation.
pub fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let zoned = t.to_zoned(tz.clone());
    let offset = zoned.offset().seconds();
    let dt = zoned.datetime();
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if offset == 0 {
        return format!("{base}Z");
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    format!("{base}{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60)
}

impl CronSchedule {
    /// Parses a schedule as Kubernetes does (robfig/cron's standard
    /// parser), in UTC; see [`CronSchedule::in_time_zone`].
    pub fn parse(text: &str) -> Result<CronSchedule, ScheduleError> {
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut spec = text;
        let mut tz = TimeZone::UTC;
        let mut tz_prefix = false;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            tz_prefix = true;
            let eq = spec.find('=').unwrap_or(0);
            let end = spec.find(' ').unwrap_or(spec.len());
            let name = spec.get(eq + 1..end).unwrap_or_default();
            tz = parse_time_zone(name).map_err(|_| ScheduleError::BadLocation(name.into()))?;
            spec = spec[end..].trim();
        }
        let parsed = if spec.starts_with('@') {
            descriptor(spec)?
        } else {
            let fields: Vec<&str> = spec.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(ScheduleError::FieldCount {
                    found: fields.len(),
                    fields: fields.iter().map(|f| f.to_string()).collect(),
                });
            }
            Spec::Fields(Fields {
                minute: field(fields[0], &MINUTES)?,
                hour: field(fields[1], &HOURS)?,
                dom: field(fields[2], &DOM)?,
                month: field(fields[3], &MONTHS)?,
                dow: field(fields[4], &DOW)?,
            })
        };
        Ok(CronSchedule {
            spec: parsed,
            tz,
            tz_prefix,
        })
    }

    /// The same schedule read in `tz` (a CronJob's `timeZone`).
    pub fn in_time_zone(mut self, tz: TimeZone) -> CronSchedule {
        self.tz = tz;
        self
    }

    /// The zone the schedule's times are read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// Whether the text began with `TZ=` or `CRON_TZ=`.
    pub fn had_tz_prefix(&self) -> bool {
        self.tz_prefix
    }

    /// The first schedule time strictly after `t`, or `None` if there is
    /// none within five years (`0 0 31 2 *`).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.spec {
            Spec::Every(secs) => {
                // robfig: the next whole second plus the interval.
                let base = Timestamp::from_second(t.as_second()).ok()?;
                base.checked_add(SignedDuration::from_secs(*secs)).ok()
            }
            Spec::Fields(f) => self.search(f, t, true),
        }
    }

    /// The latest schedule time at or before `t` (within five years).
    /// For `@every`, which has no fixed times, there is none.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.spec {
            Spec::Every(_) => None,
            Spec::Fields(f) => self.search(f, t, false),
        }
    }

    /// The schedule times in `(earliest, now]`: the latest of them and how
    /// many there were (counted up to [`TOO_MANY_MISSED`] + 1, then the
    /// latest is found directly instead of by walking every one).
    pub fn missed(&self, earliest: Timestamp, now: Timestamp) -> Missed {
        let mut missed = Missed {
            most_recent: None,
            count: 0,
        };
        let mut t = earliest;
        while let Some(next) = self.next_after(t).filter(|n| *n <= now) {
            missed.count += 1;
            missed.most_recent = Some(next);
            if missed.count > TOO_MANY_MISSED {
                missed.most_recent = match &self.spec {
                    Spec::Every(secs) => {
                        let step = (*secs).max(1);
                        let steps = (now.as_second() - next.as_second()) / step;
                        next.checked_add(SignedDuration::from_secs(steps * step))
                            .ok()
                            .or(Some(next))
                    }
                    Spec::Fields(_) => self.latest_at_or_before(now).or(Some(next)),
                };
                break;
            }
            t = next;
        }
        missed
    }

    /// Walks the civil minutes after (or at-or-before) `t` in the zone, a
    /// day at a time, for the first that matches.
    fn search(&self, f: &Fields, t: Timestamp, forward: bool) -> Option<Timestamp> {
        let local = t.to_zoned(self.tz.clone()).datetime();
        let start_minute = local
            .date()
            .to_datetime(Time::new(local.hour(), local.minute(), 0, 0).ok()?);
        let start_year = local.year();
        let mut date = local.date();
        loop {
            if (forward && date.year() > start_year.saturating_add(SEARCH_YEARS))
                || (!forward && date.year() < start_year.saturating_sub(SEARCH_YEARS))
            {
                return None;
            }
            if day_matches(f, date) {
                if let Some(found) = self.search_day(f, date, t, start_minute, forward) {
                    return Some(found);
                }
            }
            date = if forward {
                date.tomorrow().ok()?
            } else {
                date.yesterday().ok()?
            };
        }
    }

    fn search_day(
        &self,
        f: &Fields,
        date: Date,
        t: Timestamp,
        start_minute: DateTime,
        forward: bool,
    ) -> Option<Timestamp> {
        let hours: Vec<i8> = if forward {
            (0..24).collect()
        } else {
            (0..24).rev().collect()
        };
        for h in hours {
            if !f.hour.has(h as u64) {
                continue;
            }
            let minutes: Vec<i8> = if forward {
                (0..60).collect()
            } else {
                (0..60).rev().collect()
            };
            for m in minutes {
                if !f.minute.has(m as u64) {
                    continue;
                }
                let dt = date.to_datetime(Time::new(h, m, 0, 0).ok()?);
                // Civil times well before (or after) the start cannot be
                // the answer; skip them without a zone conversion.
                if forward && dt < start_minute.checked_sub(2.hours()).ok()? {
                    continue;
                }
                if !forward && dt > start_minute.checked_add(2.hours()).ok()? {
                    continue;
                }
                let at = self.tz.to_ambiguous_timestamp(dt).compatible().ok()?;
                if (forward && at > t) || (!forward && at <= t) {
                    return Some(at);
                }
            }
        }
        None
    }
}

fn day_matches(f: &Fields, date: Date) -> bool {
    if !f.month.has(date.month() as u64) {
        return false;
    }
    let dom = f.dom.has(date.day() as u64);
    let dow = f.dow.has(date.weekday().to_sunday_zero_offset() as u64);
    if f.dom.star || f.dow.star {
        dom && dow
    } else {
        dom || dow
    }
}

fn all(b: &Bounds) -> Field {
    let mut bits = 0;
    for v in b.min..=b.max {
        bits |= 1 << v;
    }
    Field { bits, star: true }
}

fn single(v: u64) -> Field {
    Field {
        bits: 1 << v,
        star: false,
    }
}

fn descriptor(spec: &str) -> Result<Spec, ScheduleError> {
    let zero = single(0);
    let fields = |dom: Field, month: Field, dow: Field, hour: Field| {
        Spec::Fields(Fields {
            minute: zero,
            hour,
            dom,
            month,
            dow,
        })
    };
    Ok(match spec {
        "@yearly" | "@annually" => fields(single(1), single(1), all(&DOW), zero),
        "@monthly" => fields(single(1), all(&MONTHS), all(&DOW), zero),
        "@weekly" => fields(all(&DOM), all(&MONTHS), single(0), zero),
        "@daily" | "@midnight" => fields(all(&DOM), all(&MONTHS), all(&DOW), zero),
        "@hourly" => fields(all(&DOM), all(&MONTHS), all(&DOW), all(&HOURS)),
        _ => match spec.strip_prefix("@every ") {
            Some(d) => {
                let nanos = go_duration(d)?;
                // robfig: at least a second, whole seconds.
                let secs = (nanos / 1_000_000_000).max(1);
                Spec::Every(i64::try_from(secs).unwrap_or(i64::MAX))
            }
            None => return Err(ScheduleError::UnknownDescriptor(spec.to_string())),
        },
    })
}

/// One field: a comma-separated list of ranges.
fn field(text: &str, b: &Bounds) -> Result<Field, ScheduleError> {
    let mut out = Field {
        bits: 0,
        star: false,
    };
    for expr in text.split(',') {
        let f = range(expr, b)?;
        out.bits |= f.bits;
        out.star |= f.star;
    }
    Ok(out)
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step` (`n/step` runs to the
/// field's maximum).
fn range(expr: &str, b: &Bounds) -> Result<Field, ScheduleError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single_value = low_high.len() == 1;
    let (start, mut end, mut star) = if low_high[0] == "*" || low_high[0] == "?" {
        // robfig ignores whatever follows a star's hyphen.
        (b.min, b.max, true)
    } else {
        let start = int_or_name(low_high[0], b)?;
        let end = match low_high.len() {
            1 => start,
            2 => int_or_name(low_high[1], b)?,
            _ => return Err(ScheduleError::TooManyHyphens(expr.to_string())),
        };
        (start, end, false)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = number(range_and_step[1])?;
            if single_value {
                end = b.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(ScheduleError::TooManySlashes(expr.to_string())),
    };
    if start < b.min {
        return Err(ScheduleError::BelowMinimum {
            start,
            min: b.min,
            expr: expr.to_string(),
        });
    }
    if end > b.max {
        return Err(ScheduleError::AboveMaximum {
            end,
            max: b.max,
            expr: expr.to_string(),
        });
    }
    if start > end {
        return Err(ScheduleError::Backwards {
            start,
            end,
            expr: expr.to_string(),
        });
    }
    if step == 0 {
        return Err(ScheduleError::ZeroStep(expr.to_string()));
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v = v.saturating_add(step);
        if v == u64::MAX {
            break;
        }
    }
    Ok(Field { bits, star })
}

fn int_or_name(expr: &str, b: &Bounds) -> Result<u64, ScheduleError> {
    let lower = expr.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    number(expr)
}

/// Go's `strconv.Atoi` (an optional sign, then decimal digits), then
/// robfig's refusal of negative numbers.
fn number(expr: &str) -> Result<u64, ScheduleError> {
    let not_a_number = |why| ScheduleError::NotANumber {
        expr: expr.to_string(),
        why,
    };
    let (negative, digits) = match expr.as_bytes().first() {
        Some(b'+') => (false, &expr[1..]),
        Some(b'-') => (true, &expr[1..]),
        _ => (false, expr),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(not_a_number("invalid syntax"));
    }
    let magnitude: i64 = digits
        .parse()
        .map_err(|_| not_a_number("value out of range"))?;
    if negative && magnitude != 0 {
        return Err(ScheduleError::Negative {
            value: -magnitude,
            expr: expr.to_string(),
        });
    }
    u64::try_from(magnitude).map_err(|_| not_a_number("value out of range"))
}

/// Go's `time.ParseDuration`, in nanoseconds (negative durations come
/// out as zero: `@every` raises them to a second anyway).
fn go_duration(input: &str) -> Result<u128, ScheduleError> {
    let err = |why: &str| ScheduleError::Duration {
        input: input.to_string(),
        why: why.to_string(),
    };
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(err("invalid duration"));
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let mut rest = rest;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("invalid duration"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let (unit, after) = rest.split_at(unit_len);
        let scale: f64 = match unit {
            "" => return Err(err("missing unit in duration")),
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(ScheduleError::Duration {
                    input: input.to_string(),
                    why: format!("unknown unit {other:?} in duration"),
                })
            }
        };
        let value: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .map_err(|_| err("invalid duration"))?;
        total += value * scale;
        if total > i64::MAX as f64 {
            return Err(err("invalid duration"));
        }
        s = after;
    }
    Ok(if negative { 0 } else { total as u128 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a valid timestamp")
    }

    fn next(schedule: &str, from: &str) -> String {
        CronSchedule::parse(schedule)
            .expect("a valid schedule")
            .next_after(at(from))
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn err(schedule: &str) -> String {
        CronSchedule::parse(schedule)
            .expect_err("an invalid schedule")
            .to_string()
    }

    #[test]
    fn accepts_what_kubernetes_accepts() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * 0",
            "0 9-17 * * MON-FRI",
            "0 0 1 jan,Jul *",
            "? ? ? ? ?",
            "5/15 * * * *",
            "0 0 1-31/2 * *",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@every 1h30m",
            "+5 * * * *",
            "0 0 30 2 *",
        ] {
            assert!(CronSchedule::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_with_robfigs_messages() {
        assert_eq!(err(""), "empty spec string");
        assert_eq!(
            err("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            err("0 0 * * * *"),
            "expected exactly 5 fields, found 6: [0 0 * * * *]"
        );
        assert_eq!(
            err("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            err("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            err("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(err("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            err("* * * FOO *"),
            "failed to parse int from FOO: strconv.Atoi: parsing \"FOO\": invalid syntax"
        );
        assert_eq!(
            err("1,,2 * * * *"),
            "failed to parse int from : strconv.Atoi: parsing \"\": invalid syntax"
        );
        assert_eq!(err("*/-1 * * * *"), "negative number (-1) not allowed: -1");
        assert_eq!(err("@often"), "unrecognized descriptor: @often");
        assert_eq!(
            err("@every soon"),
            "failed to parse duration soon: time: invalid duration \"soon\""
        );
        assert_eq!(
            err("@every 5"),
            "failed to parse duration 5: time: missing unit in duration \"5\""
        );
        assert_eq!(
            err("TZ=Mars/Olympus * * * * *"),
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn names_are_case_insensitive_and_only_where_they_belong() {
        assert!(CronSchedule::parse("0 0 * Feb sUn").is_ok());
        assert!(CronSchedule::parse("0 0 * * jan").is_err());
        assert!(CronSchedule::parse("0 0 * sunday *").is_err());
    }

    #[test]
    fn next_times_follow_the_fields() {
        assert_eq!(
            next("* * * * *", "2026-01-01T00:00:00Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-01-01T00:00:30Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T00:15:00Z"),
            "2026-01-01T00:30:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T00:06:00Z"),
            "2026-01-01T00:25:00Z"
        );
        assert_eq!(
            next("0 9-17 * * MON-FRI", "2026-01-02T17:00:00Z"),
            "2026-01-05T09:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:59:59Z"),
            "2026-01-01T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-01-01T10:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-01-01T10:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-01-31T10:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-03-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("@every 90s", "2026-01-01T00:00:00.5Z"),
            "2026-01-01T00:01:30Z"
        );
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), "");
    }

    #[test]
    fn restricted_day_fields_combine_with_or_a_star_with_and() {
        // The 13th, or any Friday: 2026-02-06 is a Friday.
        assert_eq!(
            next("0 0 13 * 5", "2026-02-01T00:00:00Z"),
            "2026-02-06T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * 5", "2026-02-07T00:00:00Z"),
            "2026-02-13T00:00:00Z"
        );
        // `*` for the day of month: Fridays only.
        assert_eq!(
            next("0 0 * * 5", "2026-02-07T00:00:00Z"),
            "2026-02-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 ? * 5", "2026-02-07T00:00:00Z"),
            "2026-02-13T00:00:00Z"
        );
        // `*/1` still counts as a star; `1-31` does not.
        assert_eq!(
            next("0 0 */1 * 5", "2026-02-07T00:00:00Z"),
            "2026-02-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 1-31 * 5", "2026-02-07T00:00:00Z"),
            "2026-02-08T00:00:00Z"
        );
    }

    #[test]
    fn times_are_read_in_the_time_zone() {
        let berlin = parse_time_zone("Europe/Berlin").expect("zone");
        let s = CronSchedule::parse("0 9 * * *")
            .expect("schedule")
            .in_time_zone(berlin.clone());
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T08:00:00Z"))
        );
        // Summer time.
        assert_eq!(
            s.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T07:00:00Z"))
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:30
        // local (shifted by the gap), once.
        let gap = CronSchedule::parse("30 2 * * *")
            .expect("schedule")
            .in_time_zone(berlin.clone());
        let first = gap.next_after(at("2026-03-28T12:00:00Z")).expect("a time");
        assert_eq!(first, at("2026-03-29T01:30:00Z"));
        assert_eq!(gap.next_after(first), Some(at("2026-03-30T00:30:00Z")));
        // 02:30 happens twice on 2026-10-25: it runs once.
        let fold = gap.next_after(at("2026-10-24T12:00:00Z")).expect("a time");
        assert_eq!(fold, at("2026-10-25T00:30:00Z"));
        assert_eq!(gap.next_after(fold), Some(at("2026-10-26T01:30:00Z")));
        assert_eq!(rfc3339_in(fold, &berlin), "2026-10-25T02:30:00+02:00");
        assert_eq!(rfc3339_in(fold, &TimeZone::UTC), "2026-10-25T00:30:00Z");
    }

    #[test]
    fn time_zones_are_exact_iana_names() {
        assert!(parse_time_zone("America/New_York").is_ok());
        assert!(parse_time_zone("UTC").is_ok());
        assert_eq!(
            parse_time_zone("Mars/Olympus").map(|_| ()),
            Err(TimeZoneError::Unknown("Mars/Olympus".into()))
        );
        assert_eq!(
            parse_time_zone("europe/berlin").map(|_| ()),
            Err(TimeZoneError::Unknown("europe/berlin".into()))
        );
        assert_eq!(
            parse_time_zone("../etc/passwd").map(|_| ()),
            Err(TimeZoneError::Unknown("../etc/passwd".into()))
        );
        assert_eq!(
            parse_time_zone("Local").map(|_| ()),
            Err(TimeZoneError::Local)
        );
        assert_eq!(parse_time_zone("").map(|_| ()), Err(TimeZoneError::Empty));
    }

    #[test]
    fn tz_prefixes_parse_but_are_flagged() {
        let s = CronSchedule::parse("CRON_TZ=Europe/Berlin 0 9 * * *").expect("schedule");
        assert!(s.had_tz_prefix());
        assert!(names_time_zone("TZ=UTC * * * * *"));
        assert!(!names_time_zone("* * * * *"));
    }

    #[test]
    fn missed_runs_are_counted_and_the_latest_found() {
        let s = CronSchedule::parse("*/10 * * * *").expect("schedule");
        let none = s.missed(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:09:59Z"));
        assert_eq!((none.most_recent, none.count), (None, 0));
        let some = s.missed(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:35:00Z"));
        assert_eq!(some.most_recent, Some(at("2026-01-01T00:30:00Z")));
        assert_eq!(some.count, 3);
        assert!(!some.too_many());
        // A month of ten-minute runs: too many, and still the latest.
        let many = s.missed(at("2026-01-01T00:00:00Z"), at("2026-02-01T12:34:56Z"));
        assert!(many.too_many());
        assert_eq!(many.most_recent, Some(at("2026-02-01T12:30:00Z")));
        let every = CronSchedule::parse("@every 1m").expect("schedule");
        let m = every.missed(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:30Z"));
        assert!(m.too_many());
        assert_eq!(m.most_recent, Some(at("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn latest_at_or_before_includes_the_instant_itself() {
        let s = CronSchedule::parse("0 * * * *").expect("schedule");
        assert_eq!(
            s.latest_at_or_before(at("2026-01-01T05:00:00Z")),
            Some(at("2026-01-01T05:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-01-01T05:59:59Z")),
            Some(at("2026-01-01T05:00:00Z"))
        );
    }
}
